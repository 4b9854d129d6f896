"""Training throughput of the compiled train call, with FLOPs from XLA's cost analysis.

  python benchmarks/train_throughput.py                          # every model below, CPU or GPU
  python benchmarks/train_throughput.py --models=digits_cdcb --steps_per_call=1,10
  python benchmarks/train_throughput.py --compare                # against PyTorch and the matmul peak

Models: sketchy (docs/method.md §3a, joint posterior, 100 classes, batch 100,
synthetic 512-d features of split 1's sizes, class-balanced sampling on
device), digits_cdcb (the offline 32x32 model of §3b, batch 32) and
mnist_cdcb (§3b at 256x256, batch 8); random images stand in for the image
datasets. Times the trainer's own pmapped call after compilation (with each
call's host inputs; not the loop's periodic fault check and metric fetch), at
the recipe's training.steps_per_call unless --steps_per_call says otherwise;
prints steps/s, ms/step, GFLOP/step and the achieved rate (and its fraction
of the peak of the GPUs in PEAKS).

--compare runs, in each of --rounds rounds, a 2048^3 float32 matrix product
(this machine's matmul peak), then per model ours and the PyTorch peers of
benchmarks/peers/ (eager and torch.compile: the same layers, loss and
optimiser), every contender in its own process and one at a time, the order
reversed every other round; it prints each run, then per model the median
steps/s, the share of the median peak and the median of the per-round
ratios ours / peer. This machine's speed drifts by 10-30% within minutes:
compare the ratios of one run, not figures across runs.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from iiae_jax import input_pipeline, models, parallel, train_state  # noqa: E402
from iiae_jax.data import PairedData  # noqa: E402

# Dense tensor-core peaks (TFLOP/s) of one device, by device kind: (float32 as TF32, bfloat16),
# from vendor datasheets. JAX's default matmul precision runs float32 products as TF32 on
# these GPUs, so TF32 is the float32 ceiling.
PEAKS = {"H100": (494.7, 989.4), "H200": (494.7, 989.4), "A100": (156.0, 312.0)}


def make_config(name, steps_per_call=None, dtype="float32"):
  """The recipe of configs/<name>.py (Sketchy on synthetic features); steps_per_call None: the recipe's."""
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config()
  if name == "sketchy":
    config.data.name, config.data.options = "synthetic_sketchy", {}
  config.model.dtype = dtype
  if steps_per_call is not None:
    config.training.steps_per_call = steps_per_call
  return config


def make_input(config, name):
  if name == "mnist_cdcb":  # random 256x256 pairs stand in for the dataset
    rng = np.random.default_rng(0)
    n = 256
    images = lambda: rng.uniform(-1, 1, (n, 256, 256, 3)).astype(np.float32)
    return input_pipeline.PairedInput(config, PairedData("random_256", "train", images(), images()))
  return input_pipeline.make_train_input(config)


def measure(name, steps, steps_per_call, dtype):
  config = make_config(name, steps_per_call, dtype)
  model = models.build_model(config.model)
  train_input = make_input(config, name)
  optimizer = train_state.make_optimizer(config.optimizer)
  state = train_state.create_train_state(config.seed, model, optimizer)
  call = train_state.make_train_call(model, optimizer, config.loss, train_input)
  resident = parallel.replicate(train_input.resident())
  replicated = parallel.replicate(state)
  k = steps_per_call
  t0 = time.perf_counter()
  compiled = call.compile(replicated, train_input.host_inputs(0, k), resident)
  compile_s = time.perf_counter() - t0
  # Per-step FLOPs from the one-step program (cost analysis counts a loop body once).
  one = compiled if k == 1 else call.compile(replicated, train_input.host_inputs(0, 1), resident)
  cost = one.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) * jax.local_device_count() if cost else 0.0
  replicated, metrics = call(replicated, train_input.host_inputs(0, k), resident)  # warm-up
  jax.block_until_ready(replicated)
  carry = {"state": replicated, "step": k}

  def time_steps(n):
    """Seconds per step over n more steps (the state carries on from the last call)."""
    replicated, start = carry["state"], carry["step"]
    step, t0 = start, time.perf_counter()
    while step < start + n:
      replicated, metrics = call(replicated, train_input.host_inputs(step, k), resident)
      step += k
    jax.block_until_ready(replicated)
    dt = (time.perf_counter() - t0) / (step - start)
    carry.update(state=replicated, step=step, loss=float(np.asarray(metrics["loss"]).reshape(-1)[-1]))
    return dt

  dt = time_steps(steps)
  return dict(steps_per_sec=1.0 / dt, ms_per_step=1e3 * dt, gflop_per_step=flops / 1e9,
              tflops=flops / dt / 1e12, compile_s=compile_s, loss=carry["loss"],
              batch=train_input.global_batch, time_steps=time_steps)


def matmul_peak(n=2048, repeats=10):
  """float32 GFLOP/s of one jit-compiled n^3 matrix product (median of `repeats` timed runs of 5)."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  product = jax.jit(lambda a: a @ a)
  jax.block_until_ready(product(a))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = [product(a) for _ in range(5)]
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / 5)
  return 2 * n ** 3 / statistics.median(times) / 1e9


# The PyTorch peers (benchmarks/peers/): per model, the command line of each mode with {steps}.
PEERS = {
    "sketchy": {"eager": ["torch_zs_step.py", "{steps}", "100"],
                "compile": ["torch_zs_step_compiled.py", "{steps}", "100"]},
    "digits_cdcb": {"eager": ["torch_image_step.py", "{steps}", "32", "eager", "--resolution=32"],
                    "compile": ["torch_image_step.py", "{steps}", "32", "compile", "--resolution=32"]},
    "mnist_cdcb": {"eager": ["torch_image_step.py", "{steps}", "8", "eager", "--resolution=256"],
                   "compile": ["torch_image_step.py", "{steps}", "8", "compile", "--resolution=256"]},
}
PEER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")
COMPARE_STEPS = {"sketchy": (600, 300), "digits_cdcb": (300, 200), "mnist_cdcb": (4, 3)}  # (ours, peers)


def _run(command, timeout=3600):
  out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
  return out.stdout


def run_worker(args):
  """Ours or the peak in this process; prints one RESULT line of JSON."""
  if args.worker == "peak":
    result = {"gflops": matmul_peak()}
  else:
    r = measure(args.models, args.steps or COMPARE_STEPS[args.models][0], _steps_per_call(args.models, args.steps_per_call),
                args.dtypes)
    result = {k: v for k, v in r.items() if k != "time_steps"}
  print("RESULT " + json.dumps(result), flush=True)


def _steps_per_call(name, value):
  return int(value) if value != "recipe" else make_config(name).training.steps_per_call


def _worker(name, args):
  command = [sys.executable, os.path.abspath(__file__), f"--worker={'peak' if name == 'peak' else 'iiae_jax'}"]
  if name != "peak":
    command += [f"--models={name}", f"--steps_per_call={args.steps_per_call}", f"--steps={args.steps}"]
  line = next(l for l in _run(command).splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def _peer(name, mode, steps):
  script, *rest = PEERS[name][mode]
  stdout = _run([sys.executable, os.path.join(PEER_DIR, script)] + [a.format(steps=steps) for a in rest])
  match = re.search(r"([\d.]+) steps/s", stdout)
  if not match:
    raise RuntimeError(f"peer {script} printed no steps/s:\n{stdout}")
  return float(match.group(1))


def compare(args):
  """Every contender in its own process, one at a time, in alternating rounds; medians at the end."""
  names = args.models.split(",")
  modes = [m for m in args.peers.split(",") if m]
  peaks, runs = [], {(n, c): [] for n in names for c in ["iiae_jax"] + modes}
  for r in range(args.rounds):
    peaks.append(_worker("peak", args)["gflops"])
    print(f"round {r + 1}: matmul peak (2048^3, float32) {peaks[-1]:.0f} GFLOP/s", flush=True)
    for name in names:
      contenders = ["iiae_jax"] + modes
      for contender in (contenders if r % 2 == 0 else contenders[::-1]):  # alternate who goes first
        if contender == "iiae_jax":
          result = _worker(name, args)
        else:
          result = {"steps_per_sec": _peer(name, contender, args.peer_steps or COMPARE_STEPS[name][1])}
        runs[(name, contender)].append(result)
        extra = (f" ({result['gflop_per_step']:.2f} GFLOP/step, {result['gflop_per_step'] * result['steps_per_sec']:.1f} "
                 f"GFLOP/s, {100 * result['gflop_per_step'] * result['steps_per_sec'] / peaks[-1]:.0f}% of peak; "
                 f"compile {result['compile_s']:.1f} s)" if contender == "iiae_jax" else "")
        print(f"round {r + 1}: {name:12s} {contender:8s} {result['steps_per_sec']:8.2f} steps/s{extra}", flush=True)
  peak = statistics.median(peaks)
  print(f"\n# {time.strftime('%Y-%m-%d')}: medians of {args.rounds} rounds; matmul peak {peak:.0f} GFLOP/s "
        f"(rounds: {', '.join(f'{p:.0f}' for p in peaks)})")
  for name in names:
    ours = runs[(name, "iiae_jax")]
    rate = statistics.median(o["steps_per_sec"] for o in ours)
    share = statistics.median(o["gflop_per_step"] * o["steps_per_sec"] / p for o, p in zip(ours, peaks))
    line = (f"{name:12s} batch {ours[0]['batch']:3d}: iiae_jax {rate:.2f} steps/s, {ours[0]['gflop_per_step']:.2f} "
            f"GFLOP/step, {100 * share:.0f}% of the matmul peak")
    for mode in modes:
      peer = [p["steps_per_sec"] for p in runs[(name, mode)]]
      ratio = statistics.median(o["steps_per_sec"] / p for o, p in zip(ours, peer))
      line += f"; torch {mode} {statistics.median(peer):.2f} steps/s: {ratio:.2f}x"
    print(line, flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="sketchy,digits_cdcb,mnist_cdcb")
  parser.add_argument("--steps", type=int, default=0, help="timed steps (default: per model)")
  parser.add_argument("--steps_per_call", default="recipe",
                      help="comma-separated list to compare; 'recipe': the recipe's training.steps_per_call")
  parser.add_argument("--dtypes", default="float32", help="float32,bfloat16")
  parser.add_argument("--compare", action="store_true",
                      help="ours against the PyTorch peers (benchmarks/peers/) and the matmul peak, each "
                           "in its own process, in alternating rounds")
  parser.add_argument("--peers", default="eager,compile", help="with --compare: the peer modes")
  parser.add_argument("--peer_steps", type=int, default=0, help="with --compare: the peers' timed steps")
  parser.add_argument("--rounds", type=int, default=3, help="with --compare: rounds; ratios are their medians")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return run_worker(args)
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  print(f"# {time.strftime('%Y-%m-%d')}  jax {jax.__version__}  {jax.device_count()} x {kind} "
        f"({device.platform}), {os.cpu_count()} CPU cores")
  if args.compare:
    return compare(args)
  peaks = next((v for k, v in PEAKS.items() if k in str(kind)), None)
  default_steps = {"sketchy": 600, "digits_cdcb": 300, "mnist_cdcb": 4}
  if device.platform != "cpu":
    default_steps = {"sketchy": 3000, "digits_cdcb": 1000, "mnist_cdcb": 200}
  for name in args.models.split(","):
    for dtype in args.dtypes.split(","):
      for k in (_steps_per_call(name, v) for v in args.steps_per_call.split(",")):
        r = measure(name, args.steps or default_steps[name], k, dtype)
        peak = ""
        if peaks:
          p = peaks[1] if dtype == "bfloat16" else peaks[0]
          p *= jax.local_device_count()  # the FLOPs are those of every local device
          peak = f"  {100 * r['tflops'] / p:.1f}% of {p:.0f} TFLOP/s"
        print(f"{name:12s} batch {r['batch']:3d} {dtype:8s} steps/call {k:3d}: {r['steps_per_sec']:8.1f} steps/s "
              f"({r['ms_per_step']:.2f} ms/step), {r['gflop_per_step']:.2f} GFLOP/step, "
              f"{1e3 * r['tflops']:.1f} GFLOP/s achieved{peak}; compile {r['compile_s']:.1f}s", flush=True)


if __name__ == "__main__":
  main()
