"""The training loop: `train_and_evaluate(config, workdir)`.

Pure pieces (`make_optimizer`, `create_train_state`, `train_step`) at the core;
the loop around them owns the side effects: devices, checkpoints, logs,
signals and evaluation.
"""
import contextlib
import fcntl
import functools
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from iiae_jax import checkpointing
from iiae_jax import config_validation
from iiae_jax import input_pipeline
from iiae_jax import models
from iiae_jax import objective
from iiae_jax import observability
from iiae_jax import parallel

# What a non-finite value can be blamed on, in the order of the fault bitmask.
FAULT_SOURCES = ("data x", "data y") + tuple(t for t in objective.TERMS if t != "c_t") + ("loss", "gradient")

# Fields that may change between a run and its resumption.
RESUMABLE_FIELDS = ("training.num_steps", "training.num_epochs", "training.log_every",
                    "training.checkpoint_every", "training.max_to_keep", "training.keep_every_epochs",
                    "training.eval_every",
                    "training.eval_every_epochs", "training.progress_bar", "training.steps_per_call",
                    "training.resident_data", "data.data_dir", "evals", "distributed")


class NumericalFault(FloatingPointError):
  """A non-finite loss, gradient or input; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 global step t
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array           # raw key data, so that it checkpoints as a plain array
  fault_step: jax.Array    # int32: first step with a non-finite value, or -1
  fault_mask: jax.Array    # int32 bitmask over FAULT_SOURCES

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(optimizer_config) -> optax.GradientTransformation:
  """Adam of SPEC §4 (lr 2e-4, b1 0.5) from `config.optimizer`.

  `flatten=True` runs the update on one concatenated vector instead of ~40
  small arrays: the same arithmetic in fewer kernels, but the concatenation
  and split cost more than they save on CPU (benchmarks/profile_step.py), so
  it is off by default.
  """
  name = optimizer_config.get("name", "adam")
  if name != "adam":
    raise ValueError(f"optimizer.name = {name!r}; only 'adam' (the paper's optimiser) is supported")
  lr = float(optimizer_config.learning_rate)
  if lr <= 0:
    raise ValueError(f"optimizer.learning_rate must be > 0, got {lr}")
  tx = optax.adam(lr, b1=float(optimizer_config.get("b1", 0.5)),
                  b2=float(optimizer_config.get("b2", 0.999)), eps=float(optimizer_config.get("eps", 1e-8)))
  return optax.flatten(tx) if optimizer_config.get("flatten", False) else tx


def create_train_state(config, model, optimizer, x_example, y_example) -> TrainState:
  """A fresh state on the host, initialised from config.seed."""
  key = jax.random.key(int(config.seed))
  variables = jax.jit(model.init)(jax.random.fold_in(key, 0), x_example, y_example)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=jax.jit(optimizer.init)(params),
                    rng=jax.random.key_data(jax.random.fold_in(key, 1)),
                    fault_step=jnp.full((), -1, jnp.int32), fault_mask=jnp.zeros((), jnp.int32))


def _nonfinite(*arrays) -> jax.Array:
  return jnp.logical_not(jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays])))


def train_step(state: TrainState, batch, *, model, optimizer, weights, axis_name=None):
  """One optimiser step on one (per-device) batch: (new state, metrics).

  Gradients, batch statistics and metrics are averaged over `axis_name`. The
  first step with a non-finite input, loss or gradient is recorded with its
  culprits (`fault_step`, `fault_mask`); the host checks them before every
  checkpoint and evaluation and stops, so a faulty state is never saved.
  (Freezing the state in-graph instead cost ~20% of a Sketchy step on CPU.)
  """
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  x, y, labels = batch

  def loss_fn(params):
    return objective.loss(model, {"params": params, "batch_stats": state.batch_stats}, batch,
                          jax.random.fold_in(key, 0), step=state.step, weights=weights, train=True,
                          axis_name=axis_name)

  (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = dict(aux["terms"], loss=total)
  batch_stats = aux["batch_stats"]
  if axis_name is not None:
    grads, metrics, batch_stats = jax.lax.pmean((grads, metrics, batch_stats), axis_name)
  # Named scopes label the ops in XLA profiles (benchmarks/step_trace.py).
  with jax.named_scope("grad_norm"):
    metrics["grad_norm"] = optax.tree.norm(grads)
  with jax.named_scope("optimizer_update"):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

  with jax.named_scope("fault_checks"):
    flags = [_nonfinite(x), _nonfinite(y)] + [_nonfinite(metrics[t]) for t in objective.TERMS if t != "c_t"]
    flags += [_nonfinite(total), _nonfinite(metrics["grad_norm"])]
    flags = jnp.stack(flags)
    if axis_name is not None:
      flags = jax.lax.pmax(flags.astype(jnp.int32), axis_name).astype(bool)
  fault = jnp.any(flags)
  first = state.fault_step < 0
  mask = jnp.sum(flags.astype(jnp.int32) << jnp.arange(len(FAULT_SOURCES), dtype=jnp.int32))
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      fault_step=jnp.where(first & fault, state.step, state.fault_step),
      fault_mask=jnp.where(first & fault, mask, state.fault_mask))
  return new_state, metrics


def describe_fault(step: int, mask: int) -> str:
  culprits = [name for i, name in enumerate(FAULT_SOURCES) if mask >> i & 1]
  return (f"non-finite value at step {step} in: {', '.join(culprits)}. Training stopped; "
          "the last good checkpoint is kept. Check the inputs for NaN/inf, or lower "
          "optimizer.learning_rate.")


# XLA:CPU options for the training program. Copy insertion with region analysis
# proves that the in-place update of the loop-carried state (parameters, Adam
# moments) needs no defensive copies; without it every step copies most of them
# (~13% of a Sketchy step on CPU, benchmarks/train_throughput.py).
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


class TrainCall:
  """A pmapped function, compiled once per input shapes with the backend's compiler options.

  Called like the pmapped function; `lower` and `compile` expose the stages
  (benchmarks read the cost analysis of the compiled program). Runs of several
  processes call the pmapped function itself: ahead-of-time compiled pmap
  programs do not take process-local arguments there.
  """

  def __init__(self, pmapped: Callable):
    self._pmapped = pmapped
    self._compiled: Dict[Any, Any] = {}
    self.compiler_options = dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}
    self._aot = bool(self.compiler_options) and jax.process_count() == 1

  def lower(self, *args):
    return self._pmapped.lower(*args)

  def compile(self, *args):
    # The state and the resident data keep their shapes for the life of a train call;
    # the host inputs (steps per call, streamed batches) decide which program runs.
    key = tuple((a.shape, a.dtype) for a in jax.tree.leaves(args[1:-1]))
    if key not in self._compiled:
      self._compiled[key] = self.lower(*args).compile(compiler_options=self.compiler_options)
    return self._compiled[key]

  def __call__(self, *args):
    return self.compile(*args)(*args) if self._aot else self._pmapped(*args)


def make_train_call(model, optimizer, weights, train_input) -> TrainCall:
  """The pmapped call that runs k steps (lax.scan): (state, inputs, resident) -> (state, metrics)."""

  def device_call(state, inputs, resident):
    # On one device the collectives (gradient mean, batch-norm statistics, fault flags)
    # are identities that still cost a rendezvous each: leave them out.
    axis_name = parallel.AXIS if jax.lax.axis_size(parallel.AXIS) > 1 else None

    def body(state, step_inputs):
      data_key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step), 1)
      with jax.named_scope("input_batch"):
        batch = train_input.make_batch(step_inputs, resident, data_key)
      return train_step(state, batch, model=model, optimizer=optimizer, weights=weights,
                        axis_name=axis_name)
    k = jax.tree.leaves(inputs)[0].shape[0]
    if k == 1:  # no loop: XLA:CPU runs convolutions inside while loops up to 15x slower
      state, metrics = body(state, jax.tree.map(lambda a: a[0], inputs))
      return state, jax.tree.map(lambda a: a[None], metrics)
    return jax.lax.scan(body, state, inputs)

  return TrainCall(jax.pmap(device_call, axis_name=parallel.AXIS, donate_argnums=(0,)))


def evaluation_schedule(training, steps_per_epoch: int):
  """(eval_every, select_from) in steps from `config.training`.

  Evaluations run every `eval_every` steps or, when `eval_every_epochs` > 0,
  every that many epochs (config validation refuses both; 0 = only at the end).
  Evaluations before the end of epoch `select_from_epoch` are logged but do not
  compete for the best checkpoint (SPEC §4: "checkpoints from epoch N").
  """
  every_epochs = int(training.get("eval_every_epochs", 0))
  eval_every = every_epochs * steps_per_epoch if every_epochs > 0 else int(training.get("eval_every", 0))
  return eval_every, int(training.get("select_from_epoch", 0)) * steps_per_epoch


def total_steps(config, train_input) -> int:
  """training.num_steps if > 0 (warning if num_epochs is also set), else num_epochs epochs."""
  t = config.training
  if int(t.get("num_steps", 0)) > 0:
    if int(t.get("num_epochs", 0)) > 0:
      logging.warning("training.num_steps = %d decides the length; training.num_epochs = %d (%d steps) "
                      "is ignored: set one of them and the other to 0", int(t.num_steps),
                      int(t.num_epochs), int(t.num_epochs) * train_input.steps_per_epoch)
    return int(t.num_steps)
  if int(t.get("num_epochs", 0)) <= 0:
    raise ValueError("set training.num_steps or training.num_epochs to a positive number")
  return int(t.num_epochs) * train_input.steps_per_epoch


# ---------------------------------------------------------------------------
# Config bookkeeping


def flatten_config(config) -> Dict[str, Any]:
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        walk(name + ".", value)
      else:
        out[name] = list(value) if isinstance(value, tuple) else value
  walk("", config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config)
  return out


def config_differences(saved: Dict[str, Any], current: Dict[str, Any]):
  """Fields (other than RESUMABLE_FIELDS) whose values differ: [(field, saved, current)]."""
  def resumable(field):
    return any(field == f or field.startswith(f + ".") for f in RESUMABLE_FIELDS)
  fields = sorted(set(saved) | set(current))
  return [(f, saved.get(f, "<absent>"), current.get(f, "<absent>")) for f in fields
          if not resumable(f) and saved.get(f, "<absent>") != current.get(f, "<absent>")]


def refuse_other_config(saved: Dict[str, Any], current: Dict[str, Any], where: str,
                        allow_config_change: bool):
  """The differing fields; raises CheckpointError listing them unless there are none or it is allowed."""
  diffs = config_differences(saved, current)
  if diffs and not allow_config_change:
    listed = "\n".join(f"  {f}: {a!r} (checkpoint) != {b!r} (now)" for f, a, b in diffs)
    raise checkpointing.CheckpointError(
        f"{where} holds a run of a different config; refusing to resume. Differing fields:\n"
        f"{listed}\nUse another --workdir, or pass --allow_config_change to resume anyway.")
  return diffs


class WorkdirBusyError(RuntimeError):
  """Another training job holds the workdir's lock."""


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


class _Preemption:
  """Turns SIGTERM into a request to checkpoint and stop, at the same step on every process.

  One process: a Python handler sets a flag, read after each compiled call.
  Several processes: JAX's preemption service (it catches SIGTERM itself and
  tells every process) names one call at which all of them stop, so they save
  the same step and none waits in a collective for a peer that has left.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._synced = False
    self._calls = 0

  def __enter__(self):
    self._synced = jax.process_count() > 1
    if self._synced:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: saving a checkpoint and stopping")
    self.requested = True

  def stop_now(self) -> bool:
    """Called by every process after every compiled call: whether to checkpoint and stop now."""
    if self._synced and not self.requested:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      self.requested = multihost_utils.reached_preemption_sync_point(self._calls)
      self._calls += 1
      if self.requested:
        logging.warning("SIGTERM (preemption notice) reached every process: saving a checkpoint and stopping")
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ---------------------------------------------------------------------------
# The loop


def selection_score(metrics: Dict[str, float]) -> Optional[float]:
  """SPEC §4 model selection: shared X→Y + Y→X accuracy, if exclusive hits are ≤ 1 each."""
  for prefix in sorted({k.split("/")[0] for k in metrics if k.endswith("shared_x_to_y")}):
    p = prefix + "/"
    if metrics.get(p + "exclusive_x_to_y_hits", 0) <= 1 and metrics.get(p + "exclusive_y_to_x_hits", 0) <= 1:
      # Rounded: equal hit totals tie exactly (0.94 + 0.99 and 1.0 + 0.93 differ in the last bit).
      return round(float(metrics[p + "shared_x_to_y"] + metrics[p + "shared_y_to_x"]), 9)
    return None
  return None


def train_and_evaluate(config, workdir: str, *, evaluate: Optional[Callable] = None,
                       allow_config_change: bool = False, argv=None) -> TrainState:
  """Trains (resuming from `<workdir>/checkpoints` if there are any) and evaluates.

  `evaluate(model, variables, step) -> metrics` runs every `training.eval_every`
  steps (or `eval_every_epochs` epochs) and at the end (on every process; only
  process 0 writes); when it reports paired-retrieval metrics, the best
  checkpoint by the SPEC §4 rule among those from epoch `select_from_epoch` on is
  kept in `<workdir>/best`. If `evaluate` has a `prepare()` attribute, it is
  called before the first step (`evaluation.training_evaluator` loads its
  splits there, so a missing one fails at start-up, not after an epoch). When
  an evaluation raises, the state it evaluated is checkpointed before the
  error propagates. Returns the final train state on the host.
  """
  config_validation.validate_config(config)  # every field, before anything loads or compiles
  parallel.initialize(config.distributed)
  if int(config.training.batch_size):  # 0: one pair per class, checked once the data are known
    parallel.check_batch_size(int(config.training.batch_size))  # before any data loads
  main = parallel.is_main_process()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with contextlib.ExitStack() as stack:
    busy = None
    if main:
      try:
        stack.enter_context(WorkdirLock(workdir))
      except WorkdirBusyError as e:
        busy = e
    parallel.raise_together(busy, WorkdirBusyError(  # every process stops, not only process 0
        f"{workdir} is in use by a running training job (process 0 could not lock it)"))
    preemption = stack.enter_context(_Preemption())
    return _train(config, workdir, evaluate, allow_config_change, argv, main, preemption)


def _train(config, workdir, evaluate, allow_config_change, argv, main, preemption):
  error = None
  try:
    model = models.build_model(config.model)
    train_input = input_pipeline.make_train_input(config)
    if (model.num_classes and train_input.kind == "zero_shot"
        and model.num_classes != train_input.num_classes):
      raise ValueError(f"model.num_classes = {model.num_classes} but the training split has "
                       f"{train_input.num_classes} classes")
    optimizer = make_optimizer(config.optimizer)
    weights = dict(config.loss)
    objective._weights(weights)  # validates the fields before anything runs
    num_steps = total_steps(config, train_input)
    t = config.training
    k = max(1, int(t.get("steps_per_call", 1)))
    log_every, ckpt_every = int(t.log_every), int(t.checkpoint_every)
    # Checkpoints at multiples of keep_every steps are never deleted (SPEC §4 Cars: every 50 epochs).
    keep_every = int(t.get("keep_every_epochs", 0)) * train_input.steps_per_epoch
    eval_every, select_from = evaluation_schedule(t, train_input.steps_per_epoch)
    if select_from > num_steps:
      raise ValueError(f"training.select_from_epoch = {t.select_from_epoch} starts model selection at "
                       f"step {select_from}, after the last step ({num_steps}): no checkpoint could be "
                       f"kept as the best")

    if evaluate is not None and hasattr(evaluate, "prepare"):
      evaluate.prepare()
  except Exception as e:  # pylint: disable=broad-except  # raised below, on every process
    error = e
  # A split missing on one host stops every process now, not after a shutdown timeout.
  parallel.raise_together(error, RuntimeError("the run's start-up (data, model, evaluation splits) "
                                              "failed on another process (see its log)"))

  x_shape, y_shape = models.input_shapes(config.model)
  state = create_train_state(config, model, optimizer, jnp.zeros((1,) + x_shape), jnp.zeros((1,) + y_shape))
  flat_config = flatten_config(config)
  checkpoints = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"), int(t.max_to_keep),
                                          keep_period=keep_every or None)
  best_dir = os.path.join(workdir, "best")
  best = checkpointing.Checkpoints(best_dir, 1) if evaluate else None
  best_score, meta = None, {}
  if checkpoints.agreed_steps():  # every process resumes, or none
    saved = checkpoints.read_meta().get("config", {})  # the newest readable record
    refuse_other_config(saved, flat_config, workdir, allow_config_change)
    # A damaged newest checkpoint is skipped (and set aside) for the newest valid one.
    state, meta, step = checkpoints.restore(state, set_aside_damaged=True)
    state = jax.tree.map(jnp.asarray, state)
    best_score = meta.get("best_score")
    logging.info("resumed from %s at step %d", checkpoints.directory, step)
  start = int(state.step)
  if best is not None and best.agreed_steps():
    best_score, other_config = _kept_best_score(best, flat_config, allow_config_change, best_score)
    if other_config:  # allowed to change: the new config's evaluations compete afresh
      best.close()
      _set_aside_dir(best_dir, f"best.until_step_{start}", main)
      best, best_score = checkpointing.Checkpoints(best_dir, 1), None
  recorded_score, best_step = meta.get("best_score"), meta.get("best_step")
  kept_step = best.latest_step() if best is not None else None
  if best is not None and best_score is not None and recorded_score is not None \
      and best_step is not None and (kept_step is None or kept_step < best_step):
    # Killed while best/<best_step> was being written (the two saves are independent); a newer
    # kept step is the killed run's later best, compared with by its own record above.
    if best_step == start:  # the restored state is the best one: write it again
      logging.warning("%s lacks the best checkpoint (step %d); it is written again from the "
                      "restored state of that step", best_dir, best_step)
      best_score = recorded_score
      best.save(start, jax.device_get(state), {"score": best_score, "metrics": {}, "step": start,
                                               "config": flat_config}, force=True, replace=True)
    else:
      logging.warning("%s lacks the best checkpoint (step %d, lost while it was written); "
                      "selection goes on from %s", best_dir, best_step,
                      f"step {kept_step}" if kept_step is not None else "nothing")
      if kept_step is None:
        best_score, best_step = None, None
  if main:
    _write_config(workdir, config, start)
  if main and argv is not None:
    with open(os.path.join(workdir, "command.txt"), "a") as f:
      f.write(" ".join(argv) + "\n")

  def save(step, force=False, evaluation_pending=False):
    host = jax.device_get(parallel.unreplicate(replicated))
    # The steps since the last log line go with the checkpoint, so that a resumed run's first
    # line averages the same steps; a failed evaluation is redone when the run resumes.
    meta = {"config": flat_config, "data_state": {"step": int(step)}, "best_score": best_score,
            "best_step": best_step, "time": time.time(), "log_window": _log_window(pending),
            "evaluation_pending": evaluation_pending}
    checkpoints.save(step, host, meta, force=force)

  def evaluate_now(step):
    """Evaluates on every process; if it fails on any, every process checkpoints, then raises."""
    nonlocal best_score, best_step
    host = jax.device_get(parallel.unreplicate(replicated))
    metrics, error = None, None
    try:
      metrics = evaluate(model, host.variables, step)
    except Exception as e:  # pylint: disable=broad-except  # re-raised below, after the others agree
      error = e

    def keep_state():  # the trained state outlives the evaluation
      if step not in checkpoints.steps():  # else a resumed run's pending evaluation failed again
        save(step, force=True, evaluation_pending=True)
    parallel.raise_together(error, RuntimeError(
        f"the evaluation at step {step} failed on another process (see its log); rerun the same "
        "command to resume and evaluate again"), before_raising=keep_state)
    previous = best_score
    best_score = _record_evaluation(metrics, host, step, writer, best if step >= select_from else None,
                                    best_score, flat_config)
    if best_score != previous:
      best_step = int(step)

  writer = observability.MetricWriter(workdir, enabled=main, start_step=start)
  progress = observability.Progress(num_steps, start, t.get("progress_bar", "auto"), enabled=main)
  train_call = make_train_call(model, optimizer, weights, train_input)
  resident = parallel.replicate(train_input.resident())
  replicated = parallel.replicate(state)
  del state
  pending, window_start, window_step = _restore_log_window(meta.get("log_window")), time.perf_counter(), start
  step = start
  stopped_early = False
  if start >= num_steps:
    logging.info("%s is already at step %d of %d: nothing to train", workdir, start, num_steps)
  try:
    if meta.get("evaluation_pending") and evaluate is not None:
      logging.info("the evaluation at step %d did not finish: running it again", start)
      evaluate_now(start)
    while step < num_steps:
      n = min(k, num_steps - step)
      # Align calls to multiples of k so a resumed run makes exactly the same calls.
      n = min(n, k - step % k) if step % k else n
      n = min(n, keep_every - step % keep_every) if keep_every else n  # end a call on a kept step
      replicated, metrics = train_call(replicated, train_input.host_inputs(step, n), resident)
      pending.append(metrics)
      step += n
      stop = preemption.stop_now()
      at = lambda every: every > 0 and step % every < n
      if (at(log_every) or step == num_steps or stop or at(ckpt_every) or at(keep_every)
          or at(eval_every)):
        _check_fault(replicated)  # before anything logs, evaluates or saves this state
      if at(log_every) or step == num_steps:
        scalars = _mean_metrics(pending)
        pending = []
        now = time.perf_counter()
        scalars["steps_per_sec"] = (step - window_step) / max(now - window_start, 1e-9)
        scalars["learning_rate"] = float(config.optimizer.learning_rate)
        window_start, window_step = now, step
        writer.write(step, scalars)
        progress.update(step, scalars)
      if evaluate is not None and (at(eval_every) or step == num_steps):
        evaluate_now(step)
      if at(ckpt_every) or at(keep_every) or step == num_steps or stop:
        save(step, force=True)
      if stop and step < num_steps:
        stopped_early = True
        break
  finally:
    checkpoints.close()
    if best is not None:
      best.close()
    progress.close()
    writer.close()
  if stopped_early:
    logging.warning("stopped by SIGTERM at step %d; rerun the same command to resume", step)
  elif best is not None and best_score is None and num_steps >= select_from:
    logging.warning("no evaluation from step %d on qualified for %s (SPEC §4: exclusive hits at "
                    "most one each); eval.py --checkpoint=best will evaluate the latest checkpoint",
                    select_from, best_dir)
  return jax.device_get(parallel.unreplicate(replicated))


def _check_fault(replicated) -> None:
  fault_step = int(replicated.fault_step[0])
  if fault_step >= 0:
    raise NumericalFault(describe_fault(fault_step, int(replicated.fault_mask[0])))


def _window_values(pending) -> Dict[str, np.ndarray]:
  """{metric: its value at each step} of the calls since the last log line."""
  stacked = jax.device_get(pending)
  return {k: np.concatenate([np.asarray(m[k][0]).reshape(-1) for m in stacked]) for k in stacked[0]}


def _mean_metrics(pending) -> Dict[str, float]:
  return {k: float(np.mean(v)) for k, v in _window_values(pending).items()}


def _log_window(pending) -> Dict[str, Any]:
  """The steps since the last log line, as JSON (for the checkpoint's record)."""
  if not pending:
    return {}
  return {k: {"dtype": str(v.dtype), "values": v.tolist()} for k, v in _window_values(pending).items()}


def _restore_log_window(window) -> list:
  """`pending` as _log_window saved it: one call's metrics of a single device."""
  if not window:
    return []
  return [{k: np.asarray(v["values"], v["dtype"])[None] for k, v in window.items()}]


def _write_config(workdir: str, config, step: int) -> None:
  """<workdir>/config.json is the current config; another one there is kept as
  config.until_step_<step>.json (the config of the steps so far)."""
  path = os.path.join(workdir, "config.json")
  text = json.dumps(config.to_dict(), indent=2, default=str)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
    os.rename(path, checkpointing.unused_path(os.path.join(workdir, f"config.until_step_{step}"), ".json"))
  checkpointing.write_atomically(path, text)


def _set_aside_dir(path: str, name: str, main: bool) -> None:
  """Renames `path` to a free `<dirname>/<name>[.N]` (process 0; every process waits for it)."""
  if main:
    target = checkpointing.unused_path(os.path.join(os.path.dirname(path), name))
    os.rename(path, target)
    logging.warning("%s was made with another config: moved to %s", path, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"iiae_jax.trainer.set_aside.{name}")


def _kept_best_score(best, flat_config, allow_config_change, fallback):
  """(score, made with another config) of the checkpoint kept in <workdir>/best.

  A rerun (after a crash, or from scratch) replaces it only with a better one,
  whatever the regular checkpoint it resumes from recorded (which may predate
  that best). `fallback` is used when the record cannot be read. Another
  config is refused unless `allow_config_change`.
  """
  try:
    meta = best.read_meta(best.latest_step())
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many types for damaged files
    logging.warning("the record of the best checkpoint in %s cannot be read (%s); a better "
                    "evaluation will replace it", best.directory, e)
    return fallback, False
  diffs = refuse_other_config(meta.get("config", flat_config), flat_config, best.directory, allow_config_change)
  return meta.get("score", fallback), bool(diffs)


def _record_evaluation(metrics, host, step, writer, best, best_score, flat_config):
  """Logs an evaluation and keeps the state in `best` if it is the best so far (SPEC §4)."""
  if not metrics:
    return best_score
  writer.write(step, metrics, kind="eval")
  logging.info("eval at step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                    if isinstance(v, (int, float))))
  if best is None:
    return best_score
  score = selection_score(metrics)
  # Every process saves, or none: process 0's numbers decide.
  if parallel.main_process_decides(score is not None and (best_score is None or score > best_score)):
    best_score = score
    # replace: a rerun may reach the kept step again (and score it a little higher).
    best.save(step, host, {"score": score, "metrics": metrics, "step": int(step), "config": flat_config},
              force=True, replace=True)
  return best_score
