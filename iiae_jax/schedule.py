"""`config.training` in steps: how long a run trains and when it logs, evaluates and saves."""
import dataclasses
import logging
from typing import FrozenSet

from iiae_jax.config import TrainingConfig
from iiae_jax.errors import ConfigError

# Evaluations during training also draw their pictures (TensorBoard), about this many times a run.
IMAGE_SETS_PER_RUN = 50


def total_steps(training: TrainingConfig, steps_per_epoch: int) -> int:
  """training.num_steps if > 0 (warning if num_epochs is also set), else num_epochs epochs."""
  if training.num_steps > 0 and training.num_epochs > 0:
    logging.warning("training.num_steps = %d decides the length; training.num_epochs = %d (%d steps) "
                    "is ignored: set one of them and the other to 0", training.num_steps,
                    training.num_epochs, training.num_epochs * steps_per_epoch)
  return training.num_steps_for(steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When things happen, in steps (0: never, or only at the end)."""
  num_steps: int
  steps_per_call: int
  log_every: int
  checkpoint_every: int
  keep_every: int      # checkpoints at multiples of this are never deleted
  eval_every: int
  select_from: int     # evaluations before this step do not compete for <workdir>/best

  @classmethod
  def from_config(cls, training: TrainingConfig, steps_per_epoch: int) -> "Schedule":
    """Evaluations run every `eval_every` steps or, with `eval_every_epochs`, every that many
    epochs; selection starts at the end of epoch `select_from_epoch` (docs/method.md §4)."""
    num_steps = total_steps(training, steps_per_epoch)
    select_from = training.select_from_epoch * steps_per_epoch
    if select_from > num_steps:
      raise ConfigError(f"training.select_from_epoch = {training.select_from_epoch} starts model "
                        f"selection at step {select_from}, after the last step ({num_steps}): no "
                        "checkpoint could be kept as the best")
    eval_every = (training.eval_every_epochs * steps_per_epoch if training.eval_every_epochs
                  else training.eval_every)
    return cls(num_steps=num_steps, steps_per_call=training.steps_per_call,
               log_every=training.log_every, checkpoint_every=training.checkpoint_every,
               keep_every=training.keep_every_epochs * steps_per_epoch, eval_every=eval_every,
               select_from=select_from)

  def call_length(self, step: int) -> int:
    """Steps of the compiled call that starts at `step`.

    Calls are aligned to multiples of steps_per_call, so a resumed run makes
    exactly the calls of an uninterrupted one, and end on every kept step.
    """
    k = self.steps_per_call
    n = min(k - step % k, self.num_steps - step)
    return min(n, self.keep_every - step % self.keep_every) if self.keep_every else n

  def draws_images(self, step: int) -> bool:
    """Whether the evaluation at `step` draws its pictures: the last, and every evaluation
    that starts a new 1 / IMAGE_SETS_PER_RUN of the run."""
    if step == self.num_steps or not self.eval_every:
      return step == self.num_steps
    every = max(self.eval_every, self.num_steps // IMAGE_SETS_PER_RUN)
    return step % every < self.eval_every

  def due(self, step: int, n: int) -> FrozenSet[str]:
    """What is due after a call of `n` steps that ended at `step`: 'log', 'evaluate', 'save'."""
    at = lambda every: every > 0 and step % every < n
    last = step == self.num_steps
    due = set()
    if at(self.log_every) or last:
      due.add("log")
    if at(self.eval_every) or last:
      due.add("evaluate")
    if at(self.checkpoint_every) or at(self.keep_every) or last:
      due.add("save")
    return frozenset(due)
