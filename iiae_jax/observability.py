"""Where a run reports itself: JSON lines, TensorBoard event files, a progress bar or log lines."""
import json
import logging
import math
import os
import sys
import time
from typing import Dict, Optional

import jax
import numpy as np
from absl import logging as absl_logging
from tensorboardX import SummaryWriter  # pure Python: no TensorFlow needed
from tqdm.auto import tqdm

from iiae_jax.files import unused_path, write_atomically


def quiet_library_logs() -> None:
  """Keeps absl's INFO log to our own lines: drops the chatter of orbax's checkpoint internals."""
  class _DropOrbaxInfo(logging.Filter):
    def filter(self, record):
      return record.levelno >= logging.WARNING or "orbax" not in record.pathname

  absl_logging.get_absl_handler().addFilter(_DropOrbaxInfo())
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard events in `<workdir>/tensorboard`.

  Only process 0 writes; the other processes get a writer that does nothing.
  A run resumed at `start_step` replays the steps after it, so the records of
  those steps that the interrupted run wrote move to
  `metrics.interrupted_after_step_<start_step>.jsonl` (metrics.jsonl then holds
  each step once), and TensorBoard hides its events after `start_step`.
  """

  def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _set_aside_records_after(path, start_step)
    self._jsonl = open(path, "a", buffering=1)
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10,
                             purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, scalars: Dict[str, float], kind: str = "train") -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind, "time": time.time()}
    record.update({k: _jsonable(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for name, value in scalars.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
          # TensorBoard tags allow [A-Za-z0-9_./-]: "precision@5" -> "precision_at_5".
          self._tb.add_scalar(f"{kind}/{name}".replace("@", "_at_"), value, int(step))

  def write_images(self, step: int, images: Dict[str, np.ndarray]) -> None:
    """uint8 (H, W, 3) images into TensorBoard's images tab, under "eval/<tag>"."""
    if not self.enabled:
      return
    for tag, image in images.items():
      self._tb.add_image(f"eval/{tag}".replace("@", "_at_"), np.asarray(image), int(step), dataformats="HWC")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


def _set_aside_records_after(path: str, step: int) -> None:
  """Moves the records of `path` after `step`, and any line cut short, into a file of their own."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept, aside = [], []
  for line in lines:
    try:
      whole = line.endswith("\n") and int(json.loads(line)["step"]) <= step
    except (ValueError, KeyError, TypeError):  # cut short by a kill, or not a record
      whole = False
    (kept if whole else aside).append(line if line.endswith("\n") else line + "\n")
  if not aside:
    return
  aside_path = unused_path(os.path.join(os.path.dirname(path), f"metrics.interrupted_after_step_{step}"),
                           ".jsonl")
  with open(aside_path, "w") as f:
    f.writelines(aside)
  write_atomically(path, "".join(kept))
  logging.info("%d lines of %s that an interrupted run wrote after step %d (or cut short) moved to %s",
               len(aside), path, step, aside_path)


def _jsonable(v):
  """Counts stay integers; other numbers become floats, non-finite ones strings."""
  kind = np.asarray(v).dtype.kind if hasattr(v, "__float__") else ""
  if kind and kind in "biu":
    return bool(v) if kind == "b" else int(v)
  v = float(v) if hasattr(v, "__float__") else v
  return v if not isinstance(v, float) or math.isfinite(v) else str(v)


class TrainMetrics:
  """The training metrics of the steps since the last log line, and their rate.

  Each compiled call adds its per-step metrics; `flush` averages them. The
  steps not yet logged travel with a checkpoint (`to_json`), so that a resumed
  run's first log line averages the same steps as an uninterrupted run's.
  """

  def __init__(self, start_step: int, saved: Optional[Dict] = None):
    # One entry per call: {metric: (local devices, steps)}; a saved window is one call of one device.
    self._calls = [{k: np.asarray(v["values"], v["dtype"])[None] for k, v in (saved or {}).items()}]
    self._calls = [c for c in self._calls if c]
    self._since, self._since_step = time.perf_counter(), start_step

  def add(self, metrics) -> None:
    self._calls.append(metrics)

  def _values(self) -> Dict[str, np.ndarray]:
    """{metric: its value at each step} of the calls so far (the first device's)."""
    stacked = jax.device_get(self._calls)
    return {k: np.concatenate([np.asarray(m[k][0]).reshape(-1) for m in stacked]) for k in stacked[0]}

  def flush(self, step: int) -> Dict[str, float]:
    """The mean of every metric since the last flush, and steps_per_sec."""
    scalars = {k: float(np.mean(v)) for k, v in self._values().items()}
    now = time.perf_counter()
    scalars["steps_per_sec"] = (step - self._since_step) / max(now - self._since, 1e-9)
    self._calls, self._since, self._since_step = [], now, step
    return scalars

  def to_json(self) -> Dict:
    if not self._calls:
      return {}
    return {k: {"dtype": str(v.dtype), "values": v.tolist()} for k, v in self._values().items()}


class Progress:
  """A tqdm bar (step, steps/s, loss, ETA) on a terminal; periodic log lines otherwise."""

  def __init__(self, total: int, initial: int, mode: str = "auto", enabled: bool = True):
    use_bar = enabled and (mode == "on" or (mode == "auto" and sys.stderr.isatty()))
    self.enabled = enabled
    self._bar = None
    self._total = total
    if use_bar:
      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)
    self._last = initial

  def update(self, step: int, scalars: Optional[Dict[str, float]] = None) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(step - self._last)
      if scalars:
        self._bar.set_postfix(loss=f"{scalars.get('loss', float('nan')):.4g}",
                              refresh=False)
    elif scalars is not None:
      rate = scalars.get("steps_per_sec", float("nan"))
      eta = (self._total - step) / rate if rate and rate > 0 else float("nan")
      logging.info("step %d/%d  loss %.5g  %.3g steps/s  ETA %s", step, self._total,
                   scalars.get("loss", float("nan")), rate, _duration(eta))
    self._last = step

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h:d}:{m:02d}:{s:02d}"
