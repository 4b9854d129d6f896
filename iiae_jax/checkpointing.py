"""Orbax checkpoints of the train state, with metadata, in `<workdir>/checkpoints`.

Each checkpoint holds the whole train state (parameters, batch statistics,
optimiser state, step, RNG) and a JSON record (the config, the data-iterator
state, metrics). Orbax writes a checkpoint into a temporary folder
(`<step>.orbax-checkpoint-tmp`) and renames it when complete, so a run killed
mid-write never leaves a checkpoint that looks finished. On restore, a damaged
checkpoint (a truncated or missing file, or an array whose CRC-32 no longer
matches the one recorded at save time: OCDBT itself does not notice flipped
bits) is skipped with a warning (by every process, when any of them reads it
damaged), and one whose arrays do not have the target's shapes is refused.
"""
import logging
import os
import sys
import warnings
import zlib
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from iiae_jax import parallel
from iiae_jax.errors import CheckpointError, ConfigMismatchError
from iiae_jax.files import unused_path

# Suffix of a damaged checkpoint's folder once set aside (orbax ignores such names).
DAMAGED_SUFFIX = ".damaged"
# Key of the per-array checksums in the JSON record (removed from what callers get back).
CHECKSUMS_KEY = "array_crc32"


class ChecksumError(ValueError):
  """A restored array differs from the one saved (bit rot, an overwritten file)."""


def _options(directory: str, max_to_keep: Optional[int], keep_period: Optional[int],
             remove_leftovers: bool) -> ocp.CheckpointManagerOptions:
  # Barriers named after the folder: the trainer's two managers finish saves at the same time.
  prefix = "iiae_" + os.path.basename(directory)
  return ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, keep_period=keep_period, create=True, enable_async_checkpointing=True,
      cleanup_tmp_directories=remove_leftovers,
      multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix))


class _Manager(ocp.CheckpointManager):
  """An orbax CheckpointManager that leaves JAX's preemption sync point to the trainer.

  Orbax reports each saved step to `multihost_utils.reached_preemption_sync_point`, the
  counter the trainer reports its compiled calls to (trainer._Preemption): JAX keeps the
  largest value reported after a SIGTERM, so a save of step 8 moved the stop of a two-process
  run from the next call to the trainer's ninth call after it (step 40 at 4 steps per call).
  Our saves are explicit (force=True), so orbax's own preemption-step saving is not used.
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class Checkpoints:
  """Saves and restores (state, meta) pairs under one directory."""

  def __init__(self, directory: str, max_to_keep: Optional[int] = 2, keep_period: Optional[int] = None,
               remove_leftovers: bool = False):
    """Keeps the newest `max_to_keep` checkpoints, and every one whose step is a multiple of
    `keep_period`. With `remove_leftovers` (a training run), the temporary folders of saves that
    a kill interrupted are removed: only those orbax names as its own, each logged."""
    self.directory = os.path.abspath(directory)
    if remove_leftovers and jax.process_index() == 0 and os.path.isdir(self.directory):
      for name in ocp.path.step.tmp_checkpoints(self.directory):
        logging.warning("removing %s: the temporary folder of an interrupted save",
                        os.path.join(self.directory, name))
    self._manager = _Manager(self.directory,
                             options=_options(self.directory, max_to_keep, keep_period, remove_leftovers))

  def steps(self):
    return sorted(self._manager.all_steps())

  def agreed_steps(self) -> List[int]:
    """`steps()`, the same on every process (a collective): where a host sees other files, every
    process raises CheckpointError, instead of some resuming while others start afresh."""
    steps = self.steps()
    _same_on_every_process(steps, self.directory)
    return steps

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: Dict[str, Any], force: bool = False,
           replace: bool = False) -> None:
    """Starts an asynchronous save of host (numpy) or device arrays.

    Host arrays get a CRC-32 in the record, checked on restore. With `replace`,
    a checkpoint already kept at `step` is deleted first (else saving it again
    is an error).
    """
    if replace and int(step) in self._manager.all_steps():
      self._manager.wait_until_finished()
      self._manager.delete(int(step))
    meta = dict(meta, **{CHECKSUMS_KEY: checksums(state)})
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def read_meta(self, step: Optional[int] = None) -> Dict[str, Any]:
    """The JSON record of checkpoint `step`; without `step`, of the newest whose record reads."""
    if step is not None:
      meta = self._read_meta(step)
      return {k: v for k, v in meta.items() if k != CHECKSUMS_KEY}
    errors = []
    for candidate in reversed(self.steps()):
      try:
        return self.read_meta(candidate)
      except Exception as e:  # pylint: disable=broad-except  # orbax raises many types for damaged files
        errors.append(f"checkpoint {candidate} in {self.directory}: {_summary(e)}")
        warnings.warn(f"the record of {errors[-1]}; trying an older one")
    if not errors:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    raise CheckpointError("no checkpoint with a readable record:\n" + "\n".join(errors) +
                          f"\nMove {self.directory} away (or use another --workdir) to start afresh.")

  def restore(self, target: Any, step: Optional[int] = None, *,
              set_aside_damaged: bool = False) -> Tuple[Any, Dict[str, Any], int]:
    """Restores into the structure, shapes and dtypes of `target` (a pytree of arrays).

    Without `step`, the newest checkpoint that restores cleanly: a damaged one
    (truncated or missing files, or an array whose CRC-32 differs from the one
    recorded at save time) is reported with a warning and the next older one
    is tried. With `set_aside_damaged` (a training run resuming), the
    damaged checkpoints newer than the one restored are renamed
    `<step>.damaged`, kept for inspection but out of the way of the steps
    the run will save again.

    Raises:
      CheckpointError: no usable checkpoint; or the saved arrays' shapes differ
        from the target's (the message lists the array paths and both shapes):
        the checkpoint was made with another model config.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    candidates = [step] if step is not None else list(reversed(self.steps()))
    _same_on_every_process(candidates, self.directory)
    if not candidates:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    errors, damaged = [], []
    _quiet_late_read_callbacks()  # before reading: a failed read's leftovers may complete at once
    for candidate in candidates:
      stored = self._stored_shapes(candidate)  # None when its metadata cannot be read (damaged)
      mismatched = stored is not None and _mismatches(stored, named_shapes(abstract))
      if mismatched:
        raise ConfigMismatchError(
            f"checkpoint {candidate} in {self.directory} does not fit: its arrays differ from the "
            f"model's and optimizer's (it was written for another config):\n{describe_mismatches(mismatched)}")
      message = None
      try:
        state, meta = self._read_state(candidate, abstract), dict(self._read_meta(candidate))
        _verify_checksums(state, meta.pop(CHECKSUMS_KEY, {}))
      except Exception as e:  # pylint: disable=broad-except  # orbax raises many types for damaged files
        message = f"checkpoint {candidate} in {self.directory} could not be restored: {_summary(e)}"
      # In step on every process: a checkpoint damaged for one is skipped by all.
      if parallel.any_process(message is not None):
        message = message or (f"checkpoint {candidate} in {self.directory} could not be restored on "
                              "another process")
        warnings.warn(message + ("; trying an older one" if candidate != candidates[-1] else ""))
        errors.append(message)
        damaged.append(candidate)
        continue
      if errors:
        logging.warning("restored checkpoint %d after skipping damaged ones: %s", candidate, damaged)
      if set_aside_damaged and damaged:
        self._set_aside(damaged)
      return state, meta, candidate
    raise CheckpointError("no usable checkpoint:\n" + "\n".join(errors) +
                          f"\nMove {self.directory} away (or use another --workdir) to start afresh.")

  # Both read through orbax's handlers: unlike the manager's restore, no cross-process barrier, so
  # processes whose reads fail differently (a damaged file on one host) stay in step.
  def _read_meta(self, step: int) -> Dict[str, Any]:
    return ocp.JsonCheckpointHandler().restore(epath.Path(self.directory, str(step), "meta"),
                                               args=ocp.args.JsonRestore())

  def _read_state(self, step: int, abstract: Any) -> Any:
    handler = ocp.StandardCheckpointHandler()
    try:
      return handler.restore(epath.Path(self.directory, str(step), "state"),
                             args=ocp.args.StandardRestore(abstract))
    finally:
      handler.close()

  def _stored_shapes(self, step: int) -> Optional[Dict[str, Tuple[int, ...]]]:
    """{array path: shape} of the state saved at `step`, from its metadata; None if unreadable."""
    try:
      tree = ocp.StandardCheckpointHandler().metadata(epath.Path(self.directory, str(step), "state"))
      return named_shapes(getattr(tree, "tree", tree)) or None  # none listed: damaged too
    except Exception:  # pylint: disable=broad-except  # damaged metadata: restore() reports it
      return None

  def _set_aside(self, steps: List[int]) -> None:
    """Renames damaged step folders `<step>.damaged[.N]` (process 0), then every process re-lists."""
    if jax.process_index() == 0:
      for step in steps:
        source = os.path.join(self.directory, str(step))
        if not os.path.isdir(source):
          continue
        target = unused_path(source + DAMAGED_SUFFIX)
        os.rename(source, target)
        warnings.warn(f"damaged checkpoint {step} moved to {target}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("iiae_jax.checkpointing.set_aside")
    self._manager.reload()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _quiet_late_read_callbacks() -> None:
  """Drops the 'Event loop is closed' errors of a failed restore's leftover reads.

  When orbax gives up on a damaged checkpoint, TensorStore reads still in
  flight complete later and try to wake the finished asyncio loop: each prints
  a traceback (hundreds per checkpoint) that would bury the one warning that
  matters. Other unraisable errors still reach the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_iiae_quiet", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)
  hook._iiae_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def _same_on_every_process(steps: List[int], directory: str) -> None:
  """Raises CheckpointError (on every process) unless every process lists the same `steps`."""
  if jax.process_count() == 1:
    return
  listed = np.asarray(multihost_utils.process_allgather(
      np.asarray(zlib.crc32(repr(list(steps)).encode()), np.int64))).reshape(-1).tolist()
  if len(set(listed)) > 1:
    raise CheckpointError(f"the processes list different checkpoints in {directory} (this one: "
                          f"{sorted(steps)}): check that every host sees the same files")


def named_shapes(tree: Any) -> Dict[str, Tuple[int, ...]]:
  """{"params/encoder/Dense_0/kernel": shape} for every array of `tree` (any pytree, or orbax's
  metadata tree of a saved one: the names are the same)."""
  def name(key):
    for field in ("key", "name", "idx"):
      if hasattr(key, field):
        return str(getattr(key, field))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(np.shape(v) if not hasattr(v, "shape") else v.shape)
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def _mismatches(stored: Dict[str, Any], wanted: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
  return [(k, stored.get(k, "absent"), wanted.get(k, "absent")) for k in sorted(set(stored) | set(wanted))
          if stored.get(k, "absent") != wanted.get(k, "absent")]


def checksums(state: Any) -> Dict[str, Any]:
  """{array path: [CRC-32, dtype, shape]} of the host (numpy) arrays of `state`."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if isinstance(leaf, (np.ndarray, np.generic)):
      a = np.ascontiguousarray(leaf)
      out[jax.tree_util.keystr(path)] = [zlib.crc32(a.view(np.uint8).reshape(-1)), a.dtype.str, list(a.shape)]
  return out


def _verify_checksums(state: Any, recorded: Dict[str, Any]) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    entry = recorded.get(jax.tree_util.keystr(path))
    if entry is None or (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable):
      continue  # not recorded, or spread over hosts (each host sees only its shards)
    a = np.ascontiguousarray(np.asarray(leaf))
    if entry[1] != a.dtype.str or list(entry[2]) != list(a.shape):
      continue  # restored into another dtype, or shape (which the shape check reports)
    if zlib.crc32(a.view(np.uint8).reshape(-1)) != entry[0]:
      raise ChecksumError(f"array {jax.tree_util.keystr(path)} does not match its CRC-32 recorded at save time")


def describe_mismatches(mismatched, limit: int = 10) -> str:
  lines = [f"  {path}: {a} (checkpoint) != {b} (expected)" for path, a, b in mismatched[:limit]]
  if len(mismatched) > limit:
    lines.append(f"  ... and {len(mismatched) - limit} more")
  return "\n".join(lines)


def _summary(error: BaseException, width: int = 300) -> str:
  """One line per exception in the chain (orbax wraps tensorstore's), without tensorstore's specs."""
  lines, seen = [], 0
  while error is not None and seen < 3:
    text = str(error).split("See full TensorStore details")[0].strip()
    first = text.splitlines()[0] if text else ""
    lines.append(f"{type(error).__name__}: {first[:width]}{' ...' if len(first) > width else ''}")
    error, seen = error.__cause__, seen + 1
  return " <- ".join(lines)
