"""A training run's folder: its lock, its config record and what resuming may change.

    <workdir>/.lock            held while a run trains there (one run per workdir)
    <workdir>/config.json      the current config; a previous one is kept as config.until_step_<S>.json
    <workdir>/command.txt      every command line that trained there
    <workdir>/checkpoints/     iiae_jax.checkpointing
    <workdir>/best/            iiae_jax.best_checkpoint
"""
import contextlib
import fcntl
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
from jax.experimental import multihost_utils

from iiae_jax import parallel
from iiae_jax.config import RENAMED
from iiae_jax.errors import CheckpointError, WorkdirBusyError
from iiae_jax.files import unused_path, write_atomically

# Fields that may change between a run and its resumption.
RESUMABLE_FIELDS = ("training.num_steps", "training.num_epochs", "training.log_every",
                    "training.checkpoint_every", "training.max_to_keep", "training.keep_every_epochs",
                    "training.eval_every", "training.eval_every_epochs", "training.progress_bar",
                    "training.steps_per_call", "training.resident_data", "training.preemption_grace_seconds",
                    "data.data_dir", "evals", "distributed")


def config_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
  """Fields (other than RESUMABLE_FIELDS) whose values differ: [(field, saved, current)].

  Both are flat records (`run_config.flatten_config`); a saved record that uses
  a field's former name counts under its current one.
  """
  saved = {RENAMED.get(k, k): v for k, v in saved.items()}

  def resumable(field):
    return any(field == f or field.startswith(f + ".") for f in RESUMABLE_FIELDS)
  fields = sorted(set(saved) | set(current))
  return [(f, saved.get(f, "<absent>"), current.get(f, "<absent>")) for f in fields
          if not resumable(f) and saved.get(f, "<absent>") != current.get(f, "<absent>")]


def refuse_other_config(saved: Dict[str, Any], current: Dict[str, Any], where: str,
                        allow_config_change: bool) -> List[Tuple[str, Any, Any]]:
  """The differing fields; CheckpointError listing them unless there are none or it is allowed."""
  diffs = config_differences(saved, current)
  if diffs and not allow_config_change:
    listed = "\n".join(f"  {f}: {a!r} (checkpoint) != {b!r} (now)" for f, a, b in diffs)
    raise CheckpointError(
        f"{where} holds a run of a different config; refusing to resume. Differing fields:\n"
        f"{listed}\nUse another --workdir, or pass --allow_config_change to resume anyway.")
  return diffs


class WorkdirLock:
  """An exclusive lock on `<workdir>/.lock`, held while a run trains there."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._file = None

  def __enter__(self):
    self._file = open(self.path, "a+")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or "another process"
      self._file.close()
      raise WorkdirBusyError(f"{os.path.dirname(self.path)} is in use by a running training job "
                             f"({holder}); use another --workdir or stop that run first") from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f"pid {os.getpid()}")
    self._file.flush()
    return self

  def __exit__(self, *exc):
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()


class Workdir:
  """The folder of one run; process 0 writes, every process may read."""

  def __init__(self, path: str, main: bool):
    self.path = os.path.abspath(path)
    self.main = main

  @contextlib.contextmanager
  def locked(self):
    """Holds `<workdir>/.lock` (process 0) for the duration; every process stops if it is taken."""
    with contextlib.ExitStack() as stack:
      busy = None
      if self.main:
        try:
          stack.enter_context(WorkdirLock(self.path))
        except WorkdirBusyError as e:
          busy = e
      parallel.raise_together(busy, WorkdirBusyError(
          f"{self.path} is in use by a running training job (process 0 could not lock it)"))
      yield self

  def join(self, *parts: str) -> str:
    return os.path.join(self.path, *parts)

  def record_config(self, config_tree: Dict[str, Any], step: int, argv: Optional[Sequence[str]]) -> None:
    """config.json is the current config; a different one there is kept as
    config.until_step_<step>.json (the config of the steps so far). The command
    line is appended to command.txt."""
    if not self.main:
      return
    path = self.join("config.json")
    text = json.dumps(config_tree, indent=2, default=str)
    previous = None
    if os.path.exists(path):
      with open(path) as f:
        previous = f.read()
    if previous != text:
      if previous is not None:
        os.rename(path, unused_path(self.join(f"config.until_step_{step}"), ".json"))
      write_atomically(path, text)
    if argv is not None:
      with open(self.join("command.txt"), "a") as f:
        f.write(" ".join(argv) + "\n")

  def set_aside(self, name: str, new_name: str) -> str:
    """Renames `<workdir>/<name>` to a free `<workdir>/<new_name>[.N]` (process 0; all wait)."""
    target = unused_path(self.join(new_name))
    if self.main:
      os.rename(self.join(name), target)
      logging.warning("%s was made with another config: moved to %s", self.join(name), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"iiae_jax.workdir.set_aside.{new_name}")
    return target
