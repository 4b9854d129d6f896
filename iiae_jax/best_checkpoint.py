"""`<workdir>/best`: the state whose evaluation scored best, with its record.

The score comes from the evaluation suite's selection rule (for the paired
datasets, `PairedRetrieval.selection_score`: docs/method.md §4). The best
checkpoint keeps its own record (score, metrics, config), so a rerun, after
a crash or from scratch, replaces it only with a better evaluation, whatever
the regular checkpoint it resumes from says.
"""
import logging
from typing import Any, Dict, Optional

from iiae_jax import checkpointing
from iiae_jax import parallel
from iiae_jax.workdir import Workdir, refuse_other_config


class BestCheckpoint:
  """Keeps the best-scoring state of a run in `<workdir>/best`."""

  def __init__(self, workdir: Workdir, record: Dict[str, Any], select_from: int):
    self.workdir = workdir
    self.directory = workdir.join("best")
    self.record = record          # the run's flat config
    self.select_from = select_from
    self.score: Optional[float] = None
    self.step: Optional[int] = None
    self._checkpoints = checkpointing.Checkpoints(self.directory, 1, remove_leftovers=True)

  def state(self) -> Dict[str, Any]:
    """What the regular checkpoints record of it (read back by `resume`)."""
    return {"best_score": self.score, "best_step": self.step}

  def resume(self, saved: Dict[str, Any], start: int, restored_state: Any,
             allow_config_change: bool) -> None:
    """Takes up the kept best checkpoint when a run resumes at `start`.

    `saved` is the regular checkpoint's record (`state()` at save time). A best
    checkpoint of another config is refused, or with `allow_config_change` set
    aside as `best.until_step_<start>/` (the new config's evaluations compete
    afresh). A best checkpoint lost to a kill while it was written is written
    again from the restored state when that is its step, else forgotten.
    """
    self.score, self.step = saved.get("best_score"), saved.get("best_step")
    if self._checkpoints.agreed_steps():  # every process takes the same branch
      kept = self._kept_record()
      if kept is not None:
        if refuse_other_config(kept.get("config", self.record), self.record, self.directory,
                               allow_config_change):
          self._checkpoints.close()
          self.workdir.set_aside("best", f"best.until_step_{start}")
          self._checkpoints = checkpointing.Checkpoints(self.directory, 1, remove_leftovers=True)
          self.score = self.step = None
          return
        self.score = kept.get("score", self.score)
    recorded_score, recorded_step = saved.get("best_score"), saved.get("best_step")
    kept_step = self._checkpoints.latest_step()
    lost = (self.score is not None and recorded_score is not None and recorded_step is not None
            and (kept_step is None or kept_step < recorded_step))
    if not lost:  # a newer kept step is the killed run's later best, compared by its own record
      return
    if recorded_step == start:
      logging.warning("%s lacks the best checkpoint (step %d); it is written again from the "
                      "restored state of that step", self.directory, recorded_step)
      self.score = recorded_score
      self._save(start, restored_state, {})
    else:
      logging.warning("%s lacks the best checkpoint (step %d, lost while it was written); "
                      "selection goes on from %s", self.directory, recorded_step,
                      f"step {kept_step}" if kept_step is not None else "nothing")
      if kept_step is None:
        self.score, self.step = None, None

  def _kept_record(self) -> Optional[Dict[str, Any]]:
    """The kept best checkpoint's record; None (with a warning) when it cannot be read."""
    try:
      return self._checkpoints.read_meta(self._checkpoints.latest_step())
    except Exception as e:  # pylint: disable=broad-except  # orbax raises many types for damaged files
      logging.warning("the record of the best checkpoint in %s cannot be read (%s); a better "
                      "evaluation will replace it", self.directory, e)
      return None

  def consider(self, step: int, score: Optional[float], host_state: Any, metrics: Dict[str, Any]) -> bool:
    """Keeps `host_state` if its evaluation is the best so far and counts (from `select_from` on).

    Every process saves, or none: process 0's numbers decide.
    """
    if step < self.select_from:
      return False
    better = score is not None and (self.score is None or score > self.score)
    if not parallel.main_process_decides(better):
      return False
    self.score = score
    self._save(step, host_state, metrics)
    return True

  def _save(self, step: int, host_state: Any, metrics: Dict[str, Any]) -> None:
    # replace: a rerun may reach the kept step again (and score it a little higher).
    self._checkpoints.save(step, host_state, {"score": self.score, "metrics": metrics, "step": int(step),
                                              "config": self.record}, force=True, replace=True)
    self.step = int(step)

  def warn_if_none_qualified(self, num_steps: int) -> None:
    if self.score is None and num_steps >= self.select_from:
      logging.warning("no evaluation from step %d on qualified for %s (docs/method.md §4: exclusive "
                      "hits at most one each); eval.py --checkpoint=best will evaluate the latest "
                      "checkpoint", self.select_from, self.directory)

  def close(self) -> None:
    self._checkpoints.close()
