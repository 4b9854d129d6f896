"""Shared test utilities: small configs, subprocesses that leave nothing behind, and running code
on several host CPU devices."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A subprocess still running after this long is hung: a loaded host makes one slower, never this slow.
HANG_S = 600


def tiny_model_config(architecture="features", shared_posterior="joint", num_classes=0):
  """Small versions of the three docs/method.md §3 networks, for fast tests."""
  if architecture == "features":
    return ml_collections.ConfigDict(dict(
        architecture="features", x_dim=12, y_dim=10, exclusive_width=8, shared_width=8, exclusive_dim=3, shared_dim=4, decoder_width=8,
        shared_posterior=shared_posterior, prior_expert=True, num_classes=num_classes))
  return ml_collections.ConfigDict(dict(
      architecture=architecture, resolution=16, channels=3, latent_resolution=4, channel_cap=8,
      exclusive_width=4, shared_width=4, exclusive_dim=3, shared_dim=6, decoder_width=4, dropout_rate=0.5,
      shared_posterior=shared_posterior, prior_expert=True, num_classes=num_classes))


def start(args, **kwargs) -> subprocess.Popen:
  """subprocess.Popen in a session of its own, so that `stop` ends it with every process it started."""
  return subprocess.Popen(args, start_new_session=True, **kwargs)


def stop(*processes: subprocess.Popen) -> None:
  """Kills each process of `start` with its descendants (its process group); reaps it."""
  for process in processes:
    with contextlib.suppress(ProcessLookupError):   # the whole group has exited
      os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run(args, timeout: float = HANG_S, **kwargs) -> subprocess.CompletedProcess:
  """subprocess.run(args, capture_output=True, text=True, ...) that leaves no process behind; a
  run past `timeout` seconds (a hang) is killed and fails with its output."""
  process = start(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
  try:
    stdout, stderr = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    stop(process)
    stdout, stderr = process.communicate()
    raise AssertionError(f"still running after {timeout} s: {args}\n{stdout[-3000:]}\n{stderr[-6000:]}") from None
  finally:
    stop(process)
  return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def run_on_devices(code: str, devices: int = 8, timeout: float = HANG_S, env=None) -> dict:
  """Runs `code` in a fresh Python with `devices` host CPU devices; returns the JSON it prints last.

  XLA's device count is fixed when jax starts, so multi-device tests need
  their own process (the flag also slows single-device work in this one).
  """
  full_env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                  PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  full_env.update(env or {})
  proc = run([sys.executable, "-c", textwrap.dedent(code)], timeout, env=full_env, cwd=ROOT)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny_train_config(name="digits_cdcb", num_steps=6, batch_size=16):
  """A real dataset config shrunk to a tiny model and a few steps."""
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config()
  for field in ("exclusive_width", "shared_width", "decoder_width"):
    config.model[field] = 4
  config.model.exclusive_dim = 2
  config.model.shared_dim = 4
  if name == "digits_cdcb":
    config.data.options.resolution = 16
    config.model.resolution = 16
    config.data.flip = True
    config.training.batch_size = batch_size
  config.training.num_steps = num_steps
  config.training.log_every = 2
  config.training.checkpoint_every = 2
  config.training.eval_every = 0
  config.training.progress_bar = "off"
  config.evals = ml_collections.ConfigDict()
  return config


def flat_leaves(tree) -> dict:
  """{path: numpy array} of a pytree, for exact comparisons."""
  import jax
  import numpy as np
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


class FunctionSuite:
  """An EvaluationSuite stand-in for the loop's tests: metrics from `fn(model, variables, step)`,
  the best checkpoint chosen by the real paired-retrieval rule on "valid/<name>/..." keys."""
  selects = True

  def __init__(self, fn, name="paired_retrieval"):
    from iiae_jax import evaluation
    self.fn = fn
    self._rule = evaluation.make_evaluator(name, {"type": "paired_retrieval", "split": "valid"}, embedder=None)

  def prepare(self):
    pass

  def __call__(self, model, variables, step, check=None):
    if check is not None:
      check()
    return self.fn(model, variables, step)

  def selection_score(self, metrics):
    return self._rule.selection_score(metrics)

  def images(self, model, variables, step):
    return {}

  def headline(self, metrics):
    return ", ".join(f"{k} {v}" for k, v in metrics.items())


def figure_grid(path, cell_width):
  """The tiled grid inside a figure PNG of `iiae_jax.evaluation.grids`, at its own scale, after
  checking that it was enlarged by repeating pixels (no smoothing) under its title and labels."""
  import numpy as np
  from PIL import Image
  from iiae_jax.evaluation import grids
  with Image.open(path) as im:
    assert im.format == "PNG" and im.mode == "RGB", path
    pixels = np.asarray(im)
  top, left = grids.figure_offset(True, True)
  assert (pixels[:top] < 128).any(), f"{path}: no title or labels above the grid"
  scale = grids.figure_scale(cell_width)
  enlarged = pixels[top:, left:]
  grid = enlarged[::scale, ::scale]
  np.testing.assert_array_equal(np.repeat(np.repeat(grid, scale, 0), scale, 1), enlarged, err_msg=path)
  return grid


def read_events(directory):
  """[(tag, step, value)] of every summary in the TensorBoard event files under `directory`:
  scalars as floats, images decoded to uint8 arrays (the files are read as TensorBoard does)."""
  import glob
  import io
  import struct
  import numpy as np
  from PIL import Image
  from tensorboardX.proto import event_pb2
  out = []
  for path in sorted(glob.glob(os.path.join(str(directory), "**", "events.out.tfevents.*"), recursive=True)):
    with open(path, "rb") as f:
      data = f.read()
    i = 0
    while i < len(data):   # records: length (u64), its crc (u32), the event, its crc (u32)
      (length,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
      i += 12 + length + 4
      for value in event.summary.value:
        kind = value.WhichOneof("value")
        if kind == "simple_value":
          out.append((value.tag, event.step, value.simple_value))
        elif kind == "image":
          with Image.open(io.BytesIO(value.image.encoded_image_string)) as im:
            out.append((value.tag, event.step, np.asarray(im.convert("RGB"))))
  return out
