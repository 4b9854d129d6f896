"""Training throughput of the compiled train call, with FLOPs from XLA's cost analysis.

  python benchmarks/train_throughput.py                      # every model below, CPU or GPU
  python benchmarks/train_throughput.py --models=sketchy --peer=../shared/peers/torch_zs_step.py

Models: sketchy (SPEC §3a, joint posterior, 100 classes, batch 100, synthetic
512-d features of split 1's sizes, class-balanced sampling on device),
mnist_cdcb (SPEC §3b at 256x256, batch 8) and digits_cdcb (the offline 32x32
model, batch 32). Random images stand in for the image datasets. Times the
trainer's own pmapped call after compilation (with each call's host inputs;
not the loop's periodic fault check and metric fetch); prints steps/s,
ms/step, GFLOP/step and the achieved rate (and its fraction of the peak of the
GPUs in PEAKS), and
with --peer the PyTorch peer's steps/s measured in the same run and the ratio.
"""
import argparse
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


def make_config(name, steps_per_call, dtype):
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config()
  if name == "sketchy":
    config.data.name, config.data.options = "synthetic_sketchy", {}
  config.model.dtype = dtype
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


def run_peer(path, steps):
  out = subprocess.run([sys.executable, path, str(steps)], capture_output=True, text=True, timeout=1800)
  match = re.search(r"([\d.]+) steps/s", out.stdout)
  if not match:
    raise RuntimeError(f"peer printed no steps/s:\n{out.stdout}\n{out.stderr[-2000:]}")
  return float(match.group(1)), out.stdout.strip().splitlines()[-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="sketchy,digits_cdcb,mnist_cdcb")
  parser.add_argument("--steps", type=int, default=0, help="timed steps (default: per model)")
  parser.add_argument("--steps_per_call", default="1", help="comma-separated list to compare")
  parser.add_argument("--dtypes", default="float32", help="float32,bfloat16")
  parser.add_argument("--peer", default="", help="path to the PyTorch peer (torch_zs_step.py)")
  parser.add_argument("--peer_steps", type=int, default=300)
  parser.add_argument("--rounds", type=int, default=3,
                      help="with --peer: interleaved rounds of ours and the peer; the ratio is their median")
  args = parser.parse_args()
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  print(f"# {time.strftime('%Y-%m-%d')}  jax {jax.__version__}  {jax.device_count()} x {kind} "
        f"({device.platform}), {os.cpu_count()} CPU cores")
  peaks = next((v for k, v in PEAKS.items() if k in str(kind)), None)
  default_steps = {"sketchy": 600, "digits_cdcb": 100, "mnist_cdcb": 10}
  if device.platform != "cpu":
    default_steps = {"sketchy": 3000, "digits_cdcb": 1000, "mnist_cdcb": 200}
  results = {}
  for name in args.models.split(","):
    for dtype in args.dtypes.split(","):
      for k in (int(v) for v in args.steps_per_call.split(",")):
        r = measure(name, args.steps or default_steps[name], k, dtype)
        results[(name, dtype, k)] = r
        peak = ""
        if peaks:
          p = peaks[1] if dtype == "bfloat16" else peaks[0]
          p *= jax.local_device_count()  # the FLOPs are those of every local device
          peak = f"  {100 * r['tflops'] / p:.1f}% of {p:.0f} TFLOP/s"
        print(f"{name:12s} batch {r['batch']:3d} {dtype:8s} steps/call {k:3d}: {r['steps_per_sec']:8.1f} steps/s "
              f"({r['ms_per_step']:.2f} ms/step), {r['gflop_per_step']:.2f} GFLOP/step, "
              f"{1e3 * r['tflops']:.1f} GFLOP/s achieved{peak}; compile {r['compile_s']:.1f}s", flush=True)
  if args.peer:
    # This machine's speed drifts by 10-20% within minutes: alternate ours and the peer
    # and report the median of the per-round ratios.
    best = max((r for (n, _, _), r in results.items() if n == "sketchy"), key=lambda r: r["steps_per_sec"])
    ratios = []
    for i in range(args.rounds):
      ours = best["steps_per_sec"] if i == 0 else 1.0 / best["time_steps"](args.steps or default_steps["sketchy"])
      peer, line = run_peer(args.peer, args.peer_steps)
      ratios.append(ours / peer)
      print(f"round {i + 1}: iiae_jax {ours:.1f} steps/s, peer {line}: {ours / peer:.2f}x", flush=True)
    print(f"sketchy: iiae_jax vs PyTorch peer, median of {len(ratios)} rounds: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
  main()
