"""Orbax checkpoints of the train state, with metadata, in `<workdir>/checkpoints`.

Each checkpoint holds the whole train state (parameters, batch statistics,
optimiser state, step, RNG) and a JSON record (the config, the data-iterator
state, metrics). Orbax writes a checkpoint into a temporary folder and renames
it when complete, so a run killed mid-write never leaves a checkpoint that
looks finished; a damaged one is skipped with a warning on restore.
"""
import logging
import os
import warnings
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one that does not fit the current config."""


def _options(max_to_keep: Optional[int]) -> ocp.CheckpointManagerOptions:
  return ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                      enable_async_checkpointing=True)


class Checkpoints:
  """Saves and restores (state, meta) pairs under one directory."""

  def __init__(self, directory: str, max_to_keep: Optional[int] = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=_options(max_to_keep))

  def steps(self):
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: Dict[str, Any], force: bool = False) -> None:
    """Starts an asynchronous save of host (numpy) or device arrays."""
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def read_meta(self, step: int) -> Dict[str, Any]:
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def restore(self, target: Any, step: Optional[int] = None) -> Tuple[Any, Dict[str, Any], int]:
    """Restores into the structure and dtypes of `target` (a pytree of arrays).

    Without `step`, the newest checkpoint that restores cleanly: a damaged one
    (truncated or missing files) is reported with a warning and the next older
    one is tried. Raises CheckpointError when none is usable.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    candidates = [step] if step is not None else list(reversed(self.steps()))
    if not candidates:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    errors = []
    for candidate in candidates:
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        if errors:
          logging.warning("restored checkpoint %d after skipping damaged ones", candidate)
        return restored["state"], restored["meta"], candidate
      except Exception as e:  # orbax raises many types for damaged files
        message = f"checkpoint {candidate} in {self.directory} could not be restored: {type(e).__name__}: {e}"
        if _is_shape_mismatch(e):
          raise CheckpointError(message + "\nIt was written for another model config.") from e
        warnings.warn(message + ("; trying an older one" if candidate != candidates[-1] else ""))
        errors.append(message)
    raise CheckpointError("no usable checkpoint:\n" + "\n".join(errors))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _is_shape_mismatch(error: Exception) -> bool:
  text = str(error).lower()
  return "shape" in text and ("mismatch" in text or "does not match" in text or "expected" in text)
