"""The pure core of training: the state, the optimiser and one step.

    state = create_train_state(seed, model, optimizer)
    state, metrics = train_step(state, batch, model=model, optimizer=optimizer, weights=config.loss)

`make_train_call` wraps k steps (lax.scan) into the pmapped, compiled call the
loop (`iiae_jax.trainer`) runs; everything here is a function of arrays.
"""
from typing import Any, Callable, Dict

import flax
import jax
import jax.numpy as jnp
import optax

from iiae_jax import objective
from iiae_jax import parallel
from iiae_jax.config import OptimizerConfig
from iiae_jax.errors import NumericalFault

# What a non-finite value can be blamed on, in the order of the fault bitmask.
FAULT_SOURCES = ("data x", "data y") + tuple(t for t in objective.TERMS if t != "c_t") + ("loss", "gradient")


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
  """Adam of docs/method.md §4 (lr 2e-4, b1 0.5) from `config.optimizer` (checked).

  `flatten=True` runs the update on one concatenated vector instead of ~40
  small arrays: the same arithmetic in fewer kernels, but the concatenation
  and split cost more than they save on CPU (benchmarks/profile_step.py), so
  it is off by default.
  """
  c = OptimizerConfig.from_mapping(optimizer_config)
  tx = optax.adam(c.learning_rate, b1=c.b1, b2=c.b2, eps=c.eps)
  return optax.flatten(tx) if c.flatten else tx


def create_train_state(seed: int, model, optimizer) -> TrainState:
  """A fresh state on the host, initialised from `seed`."""
  key = jax.random.key(int(seed))
  x, y = jnp.zeros((1,) + model.x_shape), jnp.zeros((1,) + model.y_shape)
  return train_state_holding(seed, jax.jit(model.init)(jax.random.fold_in(key, 0), x, y), optimizer)


def train_state_holding(seed: int, variables, optimizer, step: int = 0) -> TrainState:
  """The state of `create_train_state(seed, ...)` with `variables` ({"params", "batch_stats"}) at
  `step`: a fresh optimiser state, the RNG of `seed`, no fault."""
  key = jax.random.key(int(seed))
  params = variables["params"]
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=jax.jit(optimizer.init)(params),
                    rng=jax.random.key_data(jax.random.fold_in(key, 1)),
                    fault_step=jnp.full((), -1, jnp.int32), fault_mask=jnp.zeros((), jnp.int32))


def abstract_train_state(seed: int, model, optimizer) -> TrainState:
  """The shapes and dtypes of `create_train_state`, without computing it (a restore target)."""
  return jax.eval_shape(lambda: create_train_state(seed, model, optimizer))


def _nonfinite(*arrays) -> jax.Array:
  return jnp.logical_not(jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays])))


def train_step(state: TrainState, batch, *, model, optimizer, weights, axis_name=None):
  """One optimiser step on one (per-device) batch: (new state, metrics).

  Gradients, batch statistics and metrics are averaged over `axis_name`. The
  first step with a non-finite input, loss or gradient is recorded with its
  culprits (`fault_step`, `fault_mask`); the loop checks them before every
  checkpoint and evaluation and stops, so a faulty state is never saved
  (recording is cheaper than freezing the state in the graph).
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


def raise_on_fault(replicated: TrainState) -> None:
  """NumericalFault naming the first faulty step and its culprits, if any (a replicated state).

  Reads this process's copy (no collective: every copy holds the same, reduced in the step)."""
  fault_step, fault_mask = (int(parallel.unreplicate(a)) for a in (replicated.fault_step, replicated.fault_mask))
  if fault_step >= 0:
    raise NumericalFault(describe_fault(fault_step, fault_mask))


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
