"""Reliability under faults: kills, preemption, damaged checkpoints, busy or foreign
workdirs, a dead peer, extreme and broken inputs.

Faults are met where a user meets them: `python train.py` in a subprocess. One
uninterrupted reference run (a module fixture, keeping every checkpoint) is
what every interrupted run is compared with, bitwise. The training runs share
a persistent compilation cache, so only the first one compiles the tiny model.
"""
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, given, settings, strategies as st

import iiae_jax
from iiae_jax import checkpointing, train_state, trainer
from iiae_jax.workdir import WorkdirLock
from iiae_jax.metrics import paired_retrieval_accuracy
from tests.helpers import HANG_S, ROOT, flat_leaves, run, start, stop, tiny_model_config, tiny_train_config
from tests.test_multihost import WORKER, _env as _multihost_env, _free_port

NUM_STEPS = 100
# The run every test interrupts: tiny zero-shot digits (feature model), a checkpoint every 5 steps.
OVERRIDES = {"training.num_steps": NUM_STEPS, "training.log_every": 5, "training.checkpoint_every": 5}
CONFIG_FILE = '''"""The tiny run of tests/test_reliability.py (fields are overridden on the command line)."""
from tests.helpers import tiny_train_config


def get_config():
  return tiny_train_config("digits_zs")
'''
PARTIAL = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")   # orbax writes here, then renames to <step>
RESUMED = re.compile(r"resumed from \S+ at step (\d+)")


def _config(overrides=None):
  """The config that `Cli.command` builds on the command line."""
  config = tiny_train_config("digits_zs")
  for path, value in dict(OVERRIDES, **(overrides or {})).items():
    group, field = path.split(".")
    config[group][field] = value
  return config


@dataclasses.dataclass
class Cli:
  """Runs train.py (or a Python snippet) on the tiny config, with the shared compilation cache."""
  config_file: str
  env: dict

  def command(self, workdir, *extra):
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return [sys.executable, os.path.join(ROOT, "train.py"), f"--config={self.config_file}",
            f"--workdir={workdir}", *flags, *extra]

  def start(self, workdir, log, *extra) -> subprocess.Popen:
    """train.py in the background, its log in `log`; the caller ends it with `helpers.stop`."""
    with open(log, "w") as stderr:
      return start(self.command(workdir, *extra), env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=stderr)

  def run(self, workdir, *extra) -> subprocess.CompletedProcess:
    return run(self.command(workdir, *extra), env=self.env, cwd=ROOT)

  def python(self, code) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", code], env=self.env, cwd=ROOT)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  (root / "tiny_zs.py").write_text(CONFIG_FILE)
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "jax_cache"))   # unless the session has one
  env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return Cli(str(root / "tiny_zs.py"), env)


def _template():
  """The train state's shapes and dtypes (no compilation), to restore checkpoints into."""
  config = _config()
  return train_state.abstract_train_state(config.seed, iiae_jax.build_model(config.model),
                                          train_state.make_optimizer(config.optimizer))


@dataclasses.dataclass
class Reference:
  """The uninterrupted run: its workdir (every checkpoint kept) and final state."""
  workdir: str
  final: dict          # flat_leaves of the state at NUM_STEPS

  def checkpoint(self, step):
    return _restore(os.path.join(self.workdir, "checkpoints"), step)


@pytest.fixture(scope="module")
def reference(cli, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  proc = cli.run(workdir, "--config.training.max_to_keep=1000")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return Reference(workdir, _restore(os.path.join(workdir, "checkpoints"), NUM_STEPS))


def _restore(directory, step=None):
  checkpoints = checkpointing.Checkpoints(str(directory), max_to_keep=None)
  try:
    state, _, _ = checkpoints.restore(_template(), step)
  finally:
    checkpoints.close()
  return flat_leaves(state)


def _steps(directory):
  checkpoints = checkpointing.Checkpoints(str(directory), max_to_keep=None)
  steps = checkpoints.steps()
  checkpoints.close()
  return steps


def _assert_bitwise(a, b):
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _copy_run(reference, destination):
  shutil.copytree(reference.workdir, destination, ignore=shutil.ignore_patterns(".lock"))
  return destination


def _wait_until(proc, condition, log, timeout=HANG_S, poll=0.01):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"train.py ended early ({proc.returncode}):\n{open(log).read()[-3000:]}")
    if condition():
      return
    time.sleep(poll)
  raise AssertionError(f"timed out:\n{open(log).read()[-3000:]}")


def _listdir(path):
  try:
    return os.listdir(path)
  except FileNotFoundError:
    return []


def _partial_steps(directory):
  return sorted(int(m.group(1)) for m in map(PARTIAL.match, _listdir(directory)) if m)


def _finished_steps(directory):
  return [int(n) for n in _listdir(directory) if n.isdigit()]


# ---------------------------------------------------------------------------
# 1. SIGKILL at random moments, some during an asynchronous checkpoint write.


@pytest.mark.slow
def test_sigkill_at_random_moments_never_restores_a_partial_checkpoint_and_ends_bitwise_identical(
    cli, reference, tmp_path):
  workdir, log = tmp_path / "run", str(tmp_path / "log.txt")
  ckpt = workdir / "checkpoints"
  rng = random.Random(20201204)
  latest, killed_mid_write = 0, 0
  for moment in ("checkpoint write", "training step", "checkpoint write"):
    target = latest + rng.randrange(8, 25)
    proc = cli.start(workdir, log)
    try:
      if moment == "checkpoint write":   # the moment orbax's temporary folder appears
        near = max(latest + 1, target - 10)           # two checkpoints before: from there, poll finely
        _wait_until(proc, lambda: any(s >= near for s in _finished_steps(ckpt)), log)
        _wait_until(proc, lambda: any(s >= target for s in _partial_steps(ckpt)), log, poll=0.001)
      else:                              # somewhere between two checkpoints
        _wait_until(proc, lambda: any(s >= target for s in _finished_steps(ckpt)), log)
        time.sleep(rng.uniform(0.0, 0.05))
    finally:
      stop(proc)                         # SIGKILL
    resumed = [int(s) for s in RESUMED.findall(open(log).read())]
    assert resumed == ([latest] if latest else []), "resumed from the newest finished checkpoint"
    partial, steps = _partial_steps(ckpt), _steps(ckpt)
    killed_mid_write += bool(partial)
    assert not set(partial) & set(steps)             # a partial write is never listed as a checkpoint
    for step in steps:                               # what is listed is exactly the uninterrupted run's
      try:
        with warnings.catch_warnings():
          warnings.simplefilter("ignore")
          restored = _restore(ckpt, step)
      except checkpointing.CheckpointError:
        assert step < steps[-1]                      # only an old one max_to_keep was deleting
        continue
      _assert_bitwise(restored, reference.checkpoint(step))
    assert steps[-1] > latest
    latest = steps[-1]
  assert killed_mid_write >= 1, "no kill landed inside a checkpoint write"
  final = cli.run(workdir)
  assert final.returncode == 0, final.stderr[-3000:]
  assert [int(s) for s in RESUMED.findall(final.stderr)] == [latest]
  _assert_bitwise(_restore(ckpt, NUM_STEPS), reference.final)


# ---------------------------------------------------------------------------
# 2. SIGTERM (preemption), and 5. a second run on the same workdir while the first trains.


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_exits_0_and_the_resumed_run_is_bitwise_identical(
    cli, reference, tmp_path):
  workdir, log = tmp_path / "run", str(tmp_path / "log.txt")
  ckpt = workdir / "checkpoints"
  proc = cli.start(workdir, log)
  try:
    lock = workdir / ".lock"
    _wait_until(proc, lambda: lock.exists() and lock.read_text() == f"pid {proc.pid}", log)
    # 5: a second run started on the busy workdir refuses, naming the holder, and writes nothing.
    proc.send_signal(signal.SIGSTOP)     # paused meanwhile: it cannot reach its last step first
    try:
      second = cli.run(workdir)
    finally:
      proc.send_signal(signal.SIGCONT)
    assert second.returncode != 0
    assert f"in use by a running training job (pid {proc.pid})" in second.stderr
    assert "train.py: error:" in second.stderr and "Traceback" not in second.stderr
    _wait_until(proc, lambda: any(s >= 30 for s in _finished_steps(ckpt)), log)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    returncode = proc.wait(timeout=HANG_S)
    elapsed = time.monotonic() - sent
  finally:
    stop(proc)
  text = open(log).read()
  assert returncode == 0, text[-3000:]
  assert elapsed < 60
  stopped = int(re.search(r"stopped by SIGTERM at step (\d+)", text).group(1))
  assert 30 <= stopped < NUM_STEPS
  assert _steps(ckpt)[-1] == stopped                    # a checkpoint of the step it reached
  final = cli.run(workdir)
  assert final.returncode == 0, final.stderr[-3000:]
  assert [int(s) for s in RESUMED.findall(final.stderr)] == [stopped]
  _assert_bitwise(_restore(ckpt, NUM_STEPS), reference.final)
  assert len(open(workdir / "command.txt").read().splitlines()) == 2   # the refused run wrote nothing


def _listing(root):
  return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(root) for f in files if f != ".lock"}


def test_a_run_on_a_locked_workdir_refuses_before_touching_it(tmp_path):
  _save_steps(tmp_path / "checkpoints")          # a run's checkpoints
  before = _listing(tmp_path)
  with WorkdirLock(str(tmp_path)):       # held as a running job holds it
    with pytest.raises(RuntimeError, match=rf"in use by a running training job \(pid {os.getpid()}\)"):
      trainer.train_and_evaluate(_config(), str(tmp_path))
  assert _listing(tmp_path) == before


class _SlowSuite:
  """An evaluation of many batches, each after a stop check; it can SIGTERM its own process."""
  selects = False

  def __init__(self, batches=40, signal_at_step=None):
    self.batches, self.signal_at_step = batches, signal_at_step
    self.started, self.finished, self.signalled = [], [], None

  def prepare(self):
    pass

  def selection_score(self, metrics):
    return None

  def images(self, model, variables, step):
    return {}

  def headline(self, metrics):
    return str(metrics)

  def __call__(self, model, variables, step, check=None):
    self.started.append(step)
    for batch in range(self.batches):
      if batch == 1 and step == self.signal_at_step:
        self.signalled = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)   # as a scheduler's preemption notice
      check()
      time.sleep(0.02)
    self.finished.append(step)
    return {"valid/slow/batches": self.batches}


def test_sigterm_during_an_evaluation_stops_it_at_the_next_batch_and_the_rerun_redoes_it(tmp_path):
  config = tiny_train_config("digits_zs", num_steps=8)
  # A grace time far beyond a loaded host's stop and save: stopping before it is the batch check's doing.
  config.training.update(eval_every=4, checkpoint_every=1000, preemption_grace_seconds=120)
  suite = _SlowSuite(signal_at_step=4)
  state = trainer.train_and_evaluate(config, str(tmp_path), evaluations=suite)
  stopped = time.monotonic()
  assert int(state.step) == 4 and suite.started == [4] and suite.finished == []
  assert stopped - suite.signalled < config.training.preemption_grace_seconds
  assert _steps(tmp_path / "checkpoints") == [4]
  record = checkpointing.Checkpoints(str(tmp_path / "checkpoints")).read_meta(4)
  assert record["evaluation_pending"] is True
  rerun = _SlowSuite()
  assert int(trainer.train_and_evaluate(config, str(tmp_path), evaluations=rerun).step) == 8
  assert rerun.started == rerun.finished == [4, 8]       # the interrupted evaluation first


STUCK_RUN = """
import time
from iiae_jax import trainer
from tests.helpers import tiny_train_config

class Stuck:
  selects = False
  def prepare(self):
    pass
  def selection_score(self, metrics):
    return None
  def images(self, model, variables, step):
    return {{}}
  def headline(self, metrics):
    return str(metrics)
  def __call__(self, model, variables, step, check=None):
    if {stuck!r}:
      print("evaluating at step", step, flush=True)
      time.sleep(600)                 # busy, and never at a batch boundary
    return {{"valid/stuck/step": step}}

config = tiny_train_config("digits_zs", num_steps=8)
config.training.update(eval_every=4, checkpoint_every=1000, preemption_grace_seconds={grace})
trainer.train_and_evaluate(config, {workdir!r}, evaluations=Stuck())
print("finished", flush=True)
"""


def test_sigterm_during_an_evaluation_that_does_not_stop_saves_its_state_within_the_grace_time(cli, tmp_path):
  grace = 3
  workdir = tmp_path / "run"
  proc = start([sys.executable, "-c", STUCK_RUN.format(stuck=True, grace=grace, workdir=str(workdir))],
               env=cli.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    lines = []
    for line in proc.stdout:                # until the evaluation at step 4 has begun
      lines.append(line)
      if line.startswith("evaluating at step 4"):
        break
    assert proc.poll() is None, "".join(lines)[-3000:]
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    rest = proc.communicate(timeout=HANG_S)[0]
    elapsed = time.monotonic() - sent
  finally:
    stop(proc)
  output = "".join(lines) + rest
  assert proc.returncode == 0, output[-3000:]
  assert f"did not stop within {grace} s" in output and "finished" not in output
  assert elapsed < grace + 120, elapsed     # the save and the exit follow the deadline, not the 600 s sleep
  assert _steps(workdir / "checkpoints") == [4]
  assert checkpointing.Checkpoints(str(workdir / "checkpoints")).read_meta(4)["evaluation_pending"] is True
  rerun = cli.python(STUCK_RUN.format(stuck=False, grace=grace, workdir=str(workdir)))
  assert rerun.returncode == 0 and "finished" in rerun.stdout, rerun.stderr[-3000:]
  evaluated = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["kind"] == "eval"]
  assert evaluated == [4, 8]


def test_leftover_temporary_folders_of_an_interrupted_save_are_removed_and_nothing_else(tmp_path, caplog):
  checkpoints = tmp_path / "checkpoints"
  leftover = checkpoints / "4.orbax-checkpoint-tmp"
  (leftover / "state").mkdir(parents=True)
  (leftover / "state" / "partial").write_text("a kill cut this save short")
  (checkpoints / "6.damaged").mkdir()                  # set aside by an earlier run: kept
  (checkpoints / "notes").mkdir()
  (checkpoints / "notes" / "mine.txt").write_text("the user's")
  config = tiny_train_config("digits_zs", num_steps=2)
  with caplog.at_level("WARNING"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert not leftover.exists()
  assert (checkpoints / "6.damaged").is_dir() and (checkpoints / "notes" / "mine.txt").read_text() == "the user's"
  assert f"removing {leftover}: the temporary folder of an interrupted save" in caplog.text
  assert _steps(checkpoints) == [2]


# ---------------------------------------------------------------------------
# 3. Damaged checkpoints, and checkpoints of another shape.


def _small_state(value):
  rng = np.random.default_rng(value)
  return {"params": {"w": rng.normal(size=(64, 8)).astype(np.float32), "b": rng.normal(size=8).astype(np.float32)},
          "step": np.array(value, np.int32)}


def _save_steps(directory, steps=(1, 2, 3)):
  checkpoints = checkpointing.Checkpoints(str(directory), max_to_keep=None)
  for step in steps:
    checkpoints.save(step, _small_state(step), {"config": {"step": step}}, force=True)
  checkpoints.close()


def _largest_data_file(step_dir):
  """The largest chunk file of the arrays (orbax's OCDBT store: state/ocdbt.process_0/d/<hash>)."""
  folder = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  return max((os.path.join(folder, f) for f in os.listdir(folder)), key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_data_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_a_bit(step_dir):
  path = _largest_data_file(step_dir)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


DAMAGE = {
    "truncated data file": _truncate,
    "deleted data file": lambda d: os.remove(_largest_data_file(d)),
    "deleted array metadata": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "flipped bit in the data": _flip_a_bit,       # OCDBT reads it back without error: the CRC catches it
    "damaged json record": lambda d: open(os.path.join(d, "meta", "metadata"), "w").write("{"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_warns_and_falls_back_to_the_newest_valid_one(tmp_path, damage):
  _save_steps(tmp_path)
  DAMAGE[damage](str(tmp_path / "3"))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=None)
  with pytest.warns(UserWarning, match=r"checkpoint 3 in .* could not be restored: .*; trying an older one"):
    state, meta, step = checkpoints.restore(_small_state(0))
  checkpoints.close()
  assert step == 2 and meta == {"config": {"step": 2}}
  _assert_bitwise(flat_leaves(state), flat_leaves(_small_state(2)))
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]      # nothing moved without set_aside_damaged


def test_set_aside_damaged_moves_the_damaged_checkpoints_out_of_the_way(tmp_path):
  _save_steps(tmp_path)
  _truncate(str(tmp_path / "3"))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=None)
  with pytest.warns(UserWarning) as caught:
    _, _, step = checkpoints.restore(_small_state(0), set_aside_damaged=True)
  messages = [str(w.message) for w in caught]
  assert any(re.match(r"checkpoint 3 in .* could not be restored", m) for m in messages)
  assert any(re.match(r"damaged checkpoint 3 moved to .*3\.damaged$", m) for m in messages)
  assert step == 2 and checkpoints.steps() == [1, 2]
  checkpoints.save(3, _small_state(3), {}, force=True)       # the step can be saved again
  checkpoints.close()
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3", "3.damaged"]


def test_no_valid_checkpoint_is_a_clear_error_listing_each(tmp_path):
  _save_steps(tmp_path, (1, 2))
  _truncate(str(tmp_path / "2"))
  os.remove(os.path.join(tmp_path, "1", "state", "_METADATA"))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=None)
  with pytest.warns(UserWarning), pytest.raises(checkpointing.CheckpointError) as e:
    checkpoints.restore(_small_state(0))
  checkpoints.close()
  message = str(e.value)
  assert message.startswith("no usable checkpoint")
  assert "checkpoint 2 in" in message and "checkpoint 1 in" in message and "another --workdir" in message


def test_read_meta_skips_a_damaged_record(tmp_path):
  _save_steps(tmp_path)
  DAMAGE["damaged json record"](str(tmp_path / "3"))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=None)
  with pytest.warns(UserWarning, match=r"the record of checkpoint 3"):
    assert checkpoints.read_meta() == {"config": {"step": 2}}
  checkpoints.close()


def test_restore_refuses_arrays_of_another_shape_naming_paths_and_shapes(tmp_path):
  _save_steps(tmp_path)
  target = _small_state(0)
  target["params"]["w"] = np.zeros((32, 8), np.float32)
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=None)
  with pytest.raises(checkpointing.CheckpointError) as e:
    checkpoints.restore(target)                 # no fallback: an older one would not fit either
  checkpoints.close()
  message = str(e.value)
  assert "checkpoint 3" in message and "its arrays differ" in message
  assert "params/w: (64, 8) (checkpoint) != (32, 8) (expected)" in message
  assert "params/b" not in message
  # Another structure (an array added, one gone: another architecture) is a mismatch too,
  # not a damaged checkpoint.
  target = _small_state(0)
  target["params"]["extra"] = target["params"].pop("b")
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=None)
  with pytest.raises(checkpointing.ConfigMismatchError) as e, warnings.catch_warnings():
    warnings.simplefilter("error")              # no "damaged ... trying an older one"
    checkpoints.restore(target)
  checkpoints.close()
  assert "params/b: (8,) (checkpoint) != absent (expected)" in str(e.value)
  assert "params/extra: absent (checkpoint) != (8,) (expected)" in str(e.value)
  assert _steps(tmp_path) == [1, 2, 3]          # nothing set aside


def test_checksums_are_recorded_per_array_and_kept_out_of_the_returned_record(tmp_path):
  _save_steps(tmp_path, (1,))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=None)
  raw = checkpoints._manager.restore(1, args=checkpointing.ocp.args.Composite(
      meta=checkpointing.ocp.args.JsonRestore()))["meta"]
  assert checkpoints.read_meta(1) == {"config": {"step": 1}}
  checkpoints.close()
  w = np.ascontiguousarray(_small_state(1)["params"]["w"])
  assert raw[checkpointing.CHECKSUMS_KEY]["['params']['w']"] == [zlib.crc32(w.view(np.uint8).reshape(-1)),
                                                                "<f4", [64, 8]]


def test_saving_a_checkpoint_leaves_the_preemption_counter_to_the_trainer(tmp_path, monkeypatch):
  """JAX keeps one preemption counter per process: the trainer reports its compiled calls to it.
  Orbax used to report each saved step too, which, after a SIGTERM, put the stop of a
  multi-process run that many calls later (step 40 instead of 12 at 4 steps per call)."""
  from jax.experimental import multihost_utils
  reported = []
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      lambda counter: reported.append(counter) or False)
  checkpoints = checkpointing.Checkpoints(str(tmp_path))
  for step in (8, 16):
    checkpoints.save(step, _small_state(step), {"config": {"step": step}}, force=True)
  checkpoints.close()
  assert reported == [] and _steps(tmp_path) == [8, 16]


@pytest.mark.slow
def test_train_py_resumes_past_a_damaged_latest_checkpoint_and_ends_bitwise_identical(cli, reference, tmp_path):
  workdir = _copy_run(reference, tmp_path / "run")
  _truncate(str(workdir / "checkpoints" / str(NUM_STEPS)))
  proc = cli.run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(rf"checkpoint {NUM_STEPS} in \S+ could not be restored: .*; trying an older one", proc.stderr)
  assert f"damaged checkpoint {NUM_STEPS} moved to" in proc.stderr
  assert [int(s) for s in RESUMED.findall(proc.stderr)] == [NUM_STEPS - 5]
  assert (workdir / "checkpoints" / f"{NUM_STEPS}.damaged").is_dir()    # kept for inspection
  _assert_bitwise(_restore(workdir / "checkpoints", NUM_STEPS), reference.final)


# ---------------------------------------------------------------------------
# 4. A workdir holding a run of another config, through train.py.


@pytest.mark.slow
def test_train_py_refuses_a_workdir_of_another_config_unless_allowed(cli, reference, tmp_path):
  workdir = _copy_run(reference, tmp_path / "run")
  refused = cli.run(workdir, "--config.loss.beta=0.9")
  assert refused.returncode != 0
  assert "train.py: error:" in refused.stderr and "Traceback" not in refused.stderr
  assert "holds a run of a different config; refusing to resume" in refused.stderr
  assert "loss.beta: 0.5 (checkpoint) != 0.9 (now)" in refused.stderr
  assert "--allow_config_change" in refused.stderr
  assert _steps(workdir / "checkpoints")[-1] == NUM_STEPS
  allowed = cli.run(workdir, "--config.loss.beta=0.9", "--allow_config_change")
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  assert [int(s) for s in RESUMED.findall(allowed.stderr)] == [NUM_STEPS]


# ---------------------------------------------------------------------------
# 6. Two processes (2 CPU devices each): one dies, or one is preempted.

HEARTBEAT_S = 10


def _two_workers(tmp_path):
  """Starts both processes of tests/multihost_worker.py (a long run) and waits until both train;
  returns them and their logs (the caller ends them with `helpers.stop`)."""
  port = str(_free_port())
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  ckpt = tmp_path / "run" / "checkpoints"
  workers = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w") as out:
        workers.append(start([sys.executable, WORKER, str(i), "2", port, str(tmp_path / "run"),
                              str(tmp_path / "out.npz"), "100000", str(HEARTBEAT_S)],
                             env=_multihost_env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
    _wait_until(workers[0], lambda: workers[1].poll() is None and bool(_finished_steps(ckpt)),
                str(logs[0]), poll=0.05)       # both are training
  except BaseException:
    stop(*workers)
    raise
  return workers, logs


@pytest.mark.slow
def test_when_one_of_two_processes_dies_the_other_stops_with_an_error(tmp_path):
  workers, logs = _two_workers(tmp_path)
  try:
    workers[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    returncode = workers[0].wait(timeout=HANG_S)
    elapsed = time.monotonic() - killed
  finally:
    stop(*workers)
  output = logs[0].read_text()
  assert returncode != 0
  assert elapsed < 20 * HEARTBEAT_S, elapsed    # the heartbeat stops it, not the 300 s shutdown timeout
  assert "another task died" in output or "heartbeat timeout" in output, output[-3000:]


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_checkpointed_step(tmp_path):
  workers, logs = _two_workers(tmp_path)
  try:
    workers[1].send_signal(signal.SIGTERM)   # a scheduler may notify one host before the others
    sent = time.monotonic()
    returncodes = [w.wait(timeout=HANG_S) for w in workers]
    elapsed = time.monotonic() - sent
  finally:
    stop(*workers)
  outputs = [log.read_text() for log in logs]
  assert returncodes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
  assert elapsed < 200, elapsed                 # not held at exit until the 300 s shutdown timeout
  stopped = [int(re.search(r"stopped by SIGTERM at step (\d+)", out).group(1)) for out in outputs]
  assert stopped[0] == stopped[1]
  assert _steps(tmp_path / "run" / "checkpoints")[-1] == stopped[0]


# ---------------------------------------------------------------------------
# 7. Numerical safety.


def _extreme_batches(rng, b=8, dx=12, dy=10):
  huge = lambda shape: 1e6 * rng.choice([-1.0, 1.0], shape)
  cases = {
      "all zero": (np.zeros((b, dx)), np.zeros((b, dy))),
      "constant": (np.full((b, dx), 3.0), np.full((b, dy), -2.0)),
      "huge (1e6)": (huge((b, dx)), huge((b, dy))),
      "huge constant": (np.full((b, dx), 1e6), np.full((b, dy), -1e6)),
      "x constant": (np.full((b, dx), 5.0), rng.normal(size=(b, dy))),
      "y all zero": (rng.normal(size=(b, dx)), np.zeros((b, dy))),
      "half huge, half zero": (np.concatenate([huge((b // 2, dx)), np.zeros((b // 2, dx))]),
                               rng.normal(size=(b, dy))),
      "tiny (1e-30)": (1e-30 * rng.normal(size=(b, dx)), 1e-30 * rng.normal(size=(b, dy))),
  }
  return {name: (x.astype(np.float32), y.astype(np.float32)) for name, (x, y) in cases.items()}


@pytest.mark.parametrize("shared_posterior", ["joint", "poe"])
def test_extreme_inputs_keep_the_training_loss_and_gradients_finite(shared_posterior):
  model = iiae_jax.build_model(tiny_model_config("features", shared_posterior=shared_posterior))
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 12)), jnp.zeros((2, 10)))

  @jax.jit
  def loss_and_grad_norm(x, y):
    def f(params):
      return iiae_jax.loss(model, {"params": params, "batch_stats": variables["batch_stats"]}, (x, y),
                           jax.random.key(1), step=5000, train=True)
    (total, aux), grads = jax.value_and_grad(f, has_aux=True)(variables["params"])
    return total, aux["terms"], optax.tree.norm(grads)

  for name, (x, y) in _extreme_batches(np.random.default_rng(0)).items():
    total, terms, grad_norm = loss_and_grad_norm(x, y)
    bad = [t for t, v in terms.items() if not np.isfinite(v)]
    assert not bad and np.isfinite(total) and np.isfinite(grad_norm), (name, bad)


NAN_RUN = """
import dataclasses, json
import numpy as np
from iiae_jax import data as data_lib, errors, trainer
from tests.helpers import tiny_train_config

load_split = data_lib.load_split

def with_nan_sketches(data_config, split):
  data = load_split(data_config, split)
  sketch = np.array(data.sketch, np.float32)
  sketch[:, 3] = np.nan                     # in every sketch: the first step resumed draws one
  return dataclasses.replace(data, sketch=sketch)

data_lib.load_split = with_nan_sketches
config = tiny_train_config("digits_zs")
config.training.update({training})
try:
  trainer.train_and_evaluate(config, {workdir!r})
except errors.NumericalFault as e:
  print(json.dumps({{"fault": str(e)}}))
"""


@pytest.mark.slow
def test_nan_in_the_data_stops_the_run_naming_the_step_and_the_domain(cli, reference, tmp_path):
  workdir = _copy_run(reference, tmp_path / "run")
  training = {k.split(".")[1]: v for k, v in OVERRIDES.items()}
  training["num_steps"] = NUM_STEPS + 20
  proc = cli.python(NAN_RUN.format(training=training, workdir=str(workdir)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  message = json.loads(proc.stdout.strip().splitlines()[-1])["fault"]
  assert f"non-finite value at step {NUM_STEPS} in: data x," in message
  assert "data y" not in message
  assert _steps(workdir / "checkpoints")[-1] == NUM_STEPS       # nothing saved after the fault


# ---------------------------------------------------------------------------
# 8. Properties of paired retrieval (the zero-shot metrics have theirs in test_metrics_properties.py).


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([3, 9]), st.sampled_from([1, 4]))
def test_paired_retrieval_is_bounded_order_free_and_one_for_identical_pairs(seed, n, dim):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim))
  y = x + rng.uniform(0.0, 2.0) * rng.normal(size=(n, dim))
  d = ((x[:, None] - y[None]) ** 2).sum(-1)
  assume(all(np.unique(r).size == n for r in d) and all(np.unique(c).size == n for c in d.T))  # no ties
  got = paired_retrieval_accuracy(x, y)
  assert 0.0 <= got["x_to_y"] <= 1.0 and 0.0 <= got["y_to_x"] <= 1.0
  perm = rng.permutation(n)                     # reordering the pairs changes nothing
  moved = paired_retrieval_accuracy(x[perm], y[perm])
  assert (moved["x_to_y"], moved["y_to_x"]) == (got["x_to_y"], got["y_to_x"])
  swapped = paired_retrieval_accuracy(y, x)     # the two directions are each other's mirror
  assert (swapped["x_to_y"], swapped["y_to_x"]) == (got["y_to_x"], got["x_to_y"])
  perfect = paired_retrieval_accuracy(x, x.copy())
  assert perfect["x_to_y"] == perfect["y_to_x"] == 1.0


def test_a_failed_restore_does_not_print_its_leftover_reads_errors(tmp_path, monkeypatch):
  """After orbax gives up on a damaged checkpoint, TensorStore reads still in flight try to wake
  its closed event loop: hundreds of 'Event loop is closed' tracebacks would bury the warning."""
  import gc
  state = lambda v: {f"w{i}": np.random.default_rng(v).normal(size=(128, 128)).astype(np.float32)
                     for i in range(60)}
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=None)
  for step in (1, 2):
    checkpoints.save(step, state(step), {}, force=True)
  checkpoints.close()
  with open(_largest_data_file(str(tmp_path / "2")), "r+b") as f:
    f.truncate(50)
  time.sleep(1.0)                                   # an earlier test's leftover reads complete
  gc.collect()
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(str(unraisable.exc_value)))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=None)
  with pytest.warns(UserWarning, match="checkpoint 2 .* could not be restored"):
    restored, _, step = checkpoints.restore(state(0))
  checkpoints.close()
  time.sleep(1.0)                                   # the leftover reads complete
  gc.collect()
  assert step == 1
  _assert_bitwise(flat_leaves(restored), flat_leaves(state(1)))
  assert "Event loop is closed" not in seen
