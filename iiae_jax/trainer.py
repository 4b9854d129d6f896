"""The training loop: `train_and_evaluate(config, workdir)`.

It reads top to bottom: check the config, claim the workdir, build the model
and the input, resume, then train in compiled calls, logging, evaluating and
checkpointing when the schedule says so. The pure step is in
`iiae_jax.train_state`; each side effect has a module of its own: the workdir
(`workdir`), checkpoints (`checkpointing`), the best checkpoint
(`best_checkpoint`), SIGTERM (`preemption`), logs (`observability`), devices
and hosts (`parallel`). Evaluation is an `EvaluationSuite` passed in.
"""
import contextlib
import logging
import os
import threading
import time
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp

from iiae_jax import checkpointing
from iiae_jax import input_pipeline
from iiae_jax import models
from iiae_jax import observability
from iiae_jax import parallel
from iiae_jax import run_config
from iiae_jax.best_checkpoint import BestCheckpoint
from iiae_jax.errors import ConfigError
from iiae_jax.preemption import Preemption, StopRequested
from iiae_jax.schedule import Schedule
from iiae_jax.train_state import (TrainState, create_train_state, make_optimizer, make_train_call,
                                  raise_on_fault)
from iiae_jax.watchdog import StepWatchdog
from iiae_jax.workdir import Workdir, refuse_other_config


def train_and_evaluate(config, workdir: str, *, evaluations=None, allow_config_change: bool = False,
                       argv: Optional[Sequence[str]] = None) -> TrainState:
  """Trains (resuming from `<workdir>/checkpoints` if there are any) and evaluates.

  `config`: a config file's ConfigDict or a `RunConfig` (checked first, every
  bad field named at once, before anything is written or loaded).
  `evaluations`: an `EvaluationSuite` (`evaluation.EvaluationSuite.for_training`)
  or None. Its `prepare()` runs before the first step (a missing split fails
  at start-up); it evaluates every `training.eval_every` steps (or
  `eval_every_epochs` epochs) and at the end, on every process (process 0
  writes); when it has a selection rule, the best state by that rule from
  epoch `select_from_epoch` on is kept in `<workdir>/best`. An evaluation that
  raises first checkpoints the state it was given. Returns the final train
  state on the host.
  """
  run = run_config.parse(config)
  parallel.initialize(run.distributed)
  if run.training.batch_size:  # 0: one pair per class, known once the data are
    parallel.check_batch_size(run.training.batch_size)
  wd = Workdir(workdir, main=parallel.is_main_process())
  os.makedirs(wd.path, exist_ok=True)
  with contextlib.ExitStack() as stack:
    stack.enter_context(wd.locked())
    preemption = stack.enter_context(Preemption(run.training.preemption_grace_seconds))
    watchdog = stack.enter_context(StepWatchdog(run.distributed.step_timeout_seconds,
                                                enabled=jax.process_count() > 1))
    watchdog.waiting_for(0, "the run's start-up (data, model, compilation)")
    return _train(run, wd, evaluations, allow_config_change, argv, preemption, watchdog)


def _build(run, evaluations):
  """The model, the training input, the optimiser and the schedule; the evaluation splits loaded."""
  model = models.build_model(run.model)
  train_input = input_pipeline.make_train_input(run)
  if model.num_classes and train_input.kind == "zero_shot" and model.num_classes != train_input.num_classes:
    raise ConfigError(f"model.num_classes = {model.num_classes} but the training split has "
                      f"{train_input.num_classes} classes")
  schedule = Schedule.from_config(run.training, train_input.steps_per_epoch)
  if evaluations is not None:
    evaluations.prepare()
  return model, train_input, make_optimizer(run.optimizer), schedule


def _train(run, wd: Workdir, evaluations, allow_config_change, argv, preemption, watchdog) -> TrainState:
  # A split missing on one host stops every process now, not after a shutdown timeout.
  model, train_input, optimizer, schedule = parallel.run_together(
      lambda: _build(run, evaluations), "the run's start-up (data, model, evaluation splits)")
  checkpoints = checkpointing.Checkpoints(wd.join("checkpoints"), run.training.max_to_keep,
                                          keep_period=schedule.keep_every or None, remove_leftovers=True)
  best = (BestCheckpoint(wd, run.record, schedule.select_from)
          if evaluations is not None and evaluations.selects else None)
  state, saved_record = create_train_state(run.seed, model, optimizer), {}
  if checkpoints.agreed_steps():  # every process resumes, or none
    refuse_other_config(checkpoints.read_meta().get("config", {}), run.record, wd.path, allow_config_change)
    # A damaged newest checkpoint is set aside for the newest valid one.
    state, saved_record, step = checkpoints.restore(state, set_aside_damaged=True)
    state = jax.tree.map(jnp.asarray, state)
    logging.info("resumed from %s at step %d", checkpoints.directory, step)
  start = int(state.step)
  if best is not None:
    best.resume(saved_record, start, jax.device_get(state), allow_config_change)
  wd.record_config(run.tree, start, argv)

  writer = observability.MetricWriter(wd.path, enabled=wd.main, start_step=start)
  progress = observability.Progress(schedule.num_steps, start, run.training.progress_bar, enabled=wd.main)
  window = observability.TrainMetrics(start, saved_record.get("log_window"))
  train_call = make_train_call(model, optimizer, run.loss, train_input)
  resident = parallel.replicate(train_input.resident())
  replicated = parallel.replicate(state)
  del state
  save_lock, saved, call_lengths = threading.Lock(), set(checkpoints.steps()), set()

  def save(step, evaluation_pending=False, host=None):
    with save_lock:  # the preemption watcher may save an evaluated state from its thread
      if step in saved:
        return
      saved.add(step)
      host = host if host is not None else jax.device_get(parallel.unreplicate(replicated))
      checkpoints.save(step, host, _checkpoint_record(run, step, best, window, evaluation_pending), force=True)

  def evaluate(step):
    """Evaluates (every process); SIGTERM meanwhile saves the state and raises StopRequested."""
    host = jax.device_get(parallel.unreplicate(replicated))
    keep_state = lambda: step in checkpoints.steps() or save(step, evaluation_pending=True, host=host)
    watchdog.waiting_for(step, f"the evaluation at step {step}")
    try:
      with preemption.deadline(on_overdue=lambda: (keep_state(), checkpoints.wait())):
        metrics = _evaluate_together(evaluations, model, host, step, keep_state, preemption.check)
        if wd.main and schedule.draws_images(step):
          writer.write_images(step, evaluations.images(model, host.variables, step))
    except StopRequested:
      keep_state()
      raise
    if metrics:
      writer.write(step, metrics, kind="eval")
      logging.info("eval at step %d: %s (every metric: metrics.jsonl)", step, evaluations.headline(metrics))
      if best is not None:
        best.consider(step, evaluations.selection_score(metrics), host, metrics)

  step, stopped_early = start, False
  if start >= schedule.num_steps:
    logging.info("%s is already at step %d of %d: nothing to train", wd.path, start, schedule.num_steps)
  try:
    if saved_record.get("evaluation_pending") and evaluations is not None:
      logging.info("the evaluation at step %d did not finish: running it again", start)
      evaluate(start)
    while step < schedule.num_steps:
      n = schedule.call_length(step)
      watchdog.waiting_for(step, f"the training data of steps {step}-{step + n - 1}", measured=True)
      inputs = train_input.host_inputs(step, n)
      watchdog.waiting_for(step, f"the compiled call of steps {step}-{step + n - 1}",
                           measured=n in call_lengths)  # a first call of a length compiles
      call_lengths.add(n)
      replicated, metrics = train_call(replicated, inputs, resident)
      window.add(metrics)
      step += n
      stop = preemption.stop_now()
      due = schedule.due(step, n)
      if due or stop:
        raise_on_fault(replicated)  # before anything logs, evaluates or saves this state
      if "log" in due:
        scalars = dict(window.flush(step), learning_rate=run.optimizer.learning_rate)
        writer.write(step, scalars)
        progress.update(step, scalars)
      if stop:  # an evaluation due now is left to the rerun
        pending = "evaluate" in due and evaluations is not None
        watchdog.waiting_for(step, f"the checkpoint of step {step}")
        save(step, evaluation_pending=pending)
        stopped_early = step < schedule.num_steps or pending
        break
      if "evaluate" in due and evaluations is not None:
        evaluate(step)
      if "save" in due:
        watchdog.waiting_for(step, f"the checkpoint of step {step}")
        save(step)
  except StopRequested:  # during an evaluation: its state is saved, the rerun evaluates it
    stopped_early = True
  finally:
    checkpoints.close()
    if best is not None:
      best.close()
    progress.close()
    writer.close()
  if stopped_early:
    logging.warning("stopped by SIGTERM at step %d; rerun the same command to resume", step)
  elif best is not None:
    best.warn_if_none_qualified(schedule.num_steps)
  return jax.device_get(parallel.unreplicate(replicated))


def _checkpoint_record(run, step: int, best: Optional[BestCheckpoint], window, evaluation_pending: bool):
  """The JSON record beside a checkpoint: what a resumed run needs besides the arrays."""
  return dict(best.state() if best is not None else {}, config=run.record, data_state={"step": int(step)},
              time=time.time(), log_window=window.to_json(), evaluation_pending=evaluation_pending)


def _evaluate_together(evaluations, model, host: TrainState, step: int, keep_state, check) -> Dict[str, Any]:
  """Evaluates on every process; if it fails on any, every process calls `keep_state`, then raises.

  StopRequested passes straight through: every process stops at the same batch (the preemption
  sync point)."""
  metrics, error = None, None
  try:
    metrics = evaluations(model, host.variables, step, check=check)
  except StopRequested:
    raise
  except Exception as e:  # pylint: disable=broad-except  # re-raised below, after the others agree
    error = e
  parallel.raise_together(error, RuntimeError(
      f"the evaluation at step {step} failed on another process (see its log); rerun the same "
      "command to resume and evaluate again"), before_raising=keep_state)
  return metrics


