"""Where the time of one training step goes: forward, backward, optimiser update, host work.

  python benchmarks/profile_step.py                 # the Sketchy model (batch 100)
  python benchmarks/profile_step.py --model=digits_cdcb

Each piece is its own jit-compiled program, timed after compilation (median
of --repeats runs of --n calls):
  forward          the loss alone (training mode)
  forward+backward value_and_grad of the loss
  optimiser        the Adam update alone, on one flat vector and per array
  train step       train_state.train_step (all of the above + fault checks)
  train call       the trainer's pmapped call with the host's per-call work

Then (XLA:CPU only; --trace_calls=0 skips it) an XLA profile of the trainer's
call with --steps_per_call steps per call, analysed by benchmarks/step_trace.py:
op time per part of the step and per kind of op, each thread's busy time, and
the longest dependency chain through one step, and the op time of the
largest layers (forward and backward).
"""
import argparse
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks import step_trace  # noqa: E402
from benchmarks.train_throughput import make_config, make_input  # noqa: E402
from iiae_jax import models, objective, parallel, train_state  # noqa: E402


def time_calls(fn, *args, n=50, repeats=5):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / n)
  return 1e3 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="sketchy")
  parser.add_argument("--n", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps_per_call", type=int, default=0,
                      help="of the traced call (0: the recipe's training.steps_per_call)")
  parser.add_argument("--trace_calls", type=int, default=3, help="calls to trace (0: no trace)")
  parser.add_argument("--layers", type=int, default=12, help="layers to list in the profile")
  args = parser.parse_args()
  config = make_config(args.model, 1, "float32")
  model = models.build_model(config.model)
  train_input = make_input(config, args.model)
  weights = config.loss
  x_shape, y_shape = models.input_shapes(config.model)
  b = train_input.global_batch
  x = jax.random.normal(jax.random.key(1), (b,) + x_shape)
  y = jax.random.normal(jax.random.key(2), (b,) + y_shape)
  labels = jnp.arange(b) % model.num_classes if model.num_classes else None
  batch = (x, y, labels)
  variables = jax.jit(model.init)(jax.random.key(0), x[:1], y[:1])
  key = jax.random.key(3)
  loss = lambda p, bs: objective.loss(model, {"params": p, "batch_stats": bs}, batch, key, step=100,
                                      weights=weights)
  t = {}
  t["forward"] = time_calls(jax.jit(lambda p, bs: loss(p, bs)[0]), variables["params"], variables["batch_stats"],
                        n=args.n, repeats=args.repeats)
  grad = jax.jit(jax.value_and_grad(lambda p, bs: loss(p, bs)[0]))
  t["forward+backward"] = time_calls(grad, variables["params"], variables["batch_stats"], n=args.n, repeats=args.repeats)
  _, g = grad(variables["params"], variables["batch_stats"])
  for flat in (True, False):
    tx = optax.flatten(optax.adam(2e-4, b1=0.5)) if flat else optax.adam(2e-4, b1=0.5)

    def update(carry, tx=tx):
      params, opt_state = carry
      updates, opt_state = tx.update(g, opt_state, params)
      return optax.apply_updates(params, updates), opt_state
    carry = (jax.tree.map(jnp.copy, variables["params"]), tx.init(variables["params"]))
    label = "one flat vector" if flat else "per array"
    t[f"optimiser ({label})"] = time_chain(jax.jit(update, donate_argnums=0), carry, args)
  optimizer = train_state.make_optimizer(config.optimizer)
  state = train_state.create_train_state(config.seed, model, optimizer)
  call = train_state.make_train_call(model, optimizer, weights, train_input)
  step = jax.jit(lambda s: train_state.train_step(s, (x, y, labels), model=model, optimizer=optimizer,
                                              weights=weights)[0], donate_argnums=0,
                 compiler_options=call.compiler_options)
  t["train step (jit)"] = time_chain(step, jax.tree.map(jnp.copy, state), args)
  resident = parallel.replicate(train_input.resident())
  counter = iter(range(10 ** 9))
  t["train call (pmap + host inputs)"] = time_chain(
      lambda s: call(s, train_input.host_inputs(next(counter), 1), resident)[0],
      parallel.replicate(state), args)
  n_params = sum(p.size for p in jax.tree.leaves(variables["params"]))
  print(f"# {args.model}: batch {b}, {n_params:,} parameters, {jax.devices()[0].device_kind}, "
        f"{time.strftime('%Y-%m-%d')}")
  for name, ms in t.items():
    print(f"{name:36s} {ms:8.2f} ms")
  print(f"{'backward (difference)':36s} {t['forward+backward'] - t['forward']:8.2f} ms")
  print(f"{'host + dispatch (call - step)':36s} {t['train call (pmap + host inputs)'] - t['train step (jit)']:8.2f} ms")
  if args.trace_calls > 0 and jax.default_backend() == "cpu":
    print_trace(call, parallel.replicate(state), train_input, resident, args)


def print_trace(call, state, train_input, resident, args):
  """The XLA:CPU profile of the train call, per step (benchmarks/step_trace.py)."""
  k = args.steps_per_call or make_config(args.model).training.steps_per_call
  compiled = call.compile(state, train_input.host_inputs(0, k), resident)
  carry = {"state": state, "step": 0}

  def run():
    carry["state"], metrics = compiled(carry["state"], train_input.host_inputs(carry["step"], k), resident)
    carry["step"] += k
    return metrics
  a = step_trace.analyse(compiled.as_text(), step_trace.trace_events(run, args.trace_calls))
  busy = " + ".join(f"{ms:.1f}" for ms in sorted(a["thread_busy_ms"].values(), reverse=True))
  print(f"\n# XLA:CPU profile of the train call ({k} steps per call, {a['steps']} steps traced), per step")
  print(f"{'span (first to last op)':36s} {a['span_ms']:8.2f} ms")
  print(f"{'op time, all threads':36s} {a['op_ms']:8.2f} ms  (threads busy: {busy} ms)")
  print(f"{'longest dependency chain':36s} {a['critical_ms']:8.2f} ms")
  longest = sorted(a["critical_path"], key=lambda op: -op[1])[:4]
  print("  its longest ops: " + ", ".join(
      f"{ms:.2f} ms {name} ({scope.split('/', 4)[-1]})" for name, ms, scope in longest))
  for title, table in (("by part", a["by_part"]), ("by kind", a["by_kind"])):
    print(f"op time {title}: " + ", ".join(f"{name} {ms:.2f}" for name, ms in table.items()) + " ms")
  layers = collections.defaultdict(dict)
  for (layer, part), ms in a["by_layer"].items():
    layers[layer][part] = ms
  print(f"op time by layer, the {args.layers} largest (forward + backward, ms):")
  for layer, parts in sorted(layers.items(), key=lambda kv: -sum(kv[1].values()))[:args.layers]:
    print(f"  {layer:60s} {parts.get('forward', 0.0):6.2f} + {parts.get('backward', 0.0):6.2f}")


def time_chain(fn, carry, args):
  """Median ms of `carry = fn(carry)` (state fed back, so donation works)."""
  carry = fn(carry)
  jax.block_until_ready(carry)
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    for _ in range(args.n):
      carry = fn(carry)
    jax.block_until_ready(carry)
    times.append((time.perf_counter() - t0) / args.n)
  return 1e3 * statistics.median(times)


if __name__ == "__main__":
  main()
