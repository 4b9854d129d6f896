"""Wall time of the full Sketchy split-1 schedule: 10 epochs = 6,100 steps at batch 100.

  python benchmarks/sketchy_schedule.py                 # configs/sketchy.py on synthetic features
  python benchmarks/sketchy_schedule.py --epochs=1      # a shorter run

Runs `trainer.train_and_evaluate` exactly as `train.py --config=configs/sketchy.py`
would (class-balanced sampling on device, periodic logging, a checkpoint at the
end) on random 512-d features of split 1's sizes (61,058 sketches, 58,376
photos, 100 classes); only the zero-shot evaluation is left out (it is timed
by benchmarks/eval_retrieval.py). Prints the wall time (data generation and
compilation included; Python and jax imports not) and the steady steps/s.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from configs import sketchy  # noqa: E402
from iiae_jax import input_pipeline, observability, run_config, schedule, trainer  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--steps_per_call", type=int, default=0, help="0: the config's value")
  args = parser.parse_args()
  observability.quiet_library_logs()
  config = sketchy.get_config()
  config.data.name, config.data.options = "synthetic_sketchy", {}
  config.training.num_epochs = args.epochs
  config.training.progress_bar = "off"
  config.training.checkpoint_every = 1_000_000  # one checkpoint, at the end
  if args.steps_per_call:
    config.training.steps_per_call = args.steps_per_call
  config.evals = {}
  device = jax.devices()[0]
  print(f"# {time.strftime('%Y-%m-%d')}  jax {jax.__version__}  {jax.device_count()} x "
        f"{getattr(device, 'device_kind', device.platform)}, {os.cpu_count()} CPU cores; "
        f"steps/call {config.training.steps_per_call}, log every {config.training.log_every}")
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    state = trainer.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t0
    steps = int(state.step)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      logged = [r for r in map(json.loads, f) if r["kind"] == "train"]
  # Steady state: between the first and the last log record (compilation excluded).
  first, last = logged[0], logged[-1]
  steady = (last["step"] - first["step"]) / (last["time"] - first["time"])
  expected = schedule.total_steps(run_config.parse(config).training,
                                  input_pipeline.make_train_input(config).steps_per_epoch)
  if steps != expected:  # stopped by SIGTERM (e.g. a `timeout`): not the schedule's time
    print(f"sketchy schedule: STOPPED EARLY at step {steps} of {expected} after {wall:.1f} s wall; "
          f"{steady:.1f} steps/s after the first log")
    sys.exit(1)
  print(f"sketchy schedule: {steps} steps ({args.epochs} epochs) in {wall:.1f} s wall, "
        f"{steady:.1f} steps/s after the first log (compilation excluded); "
        f"final loss {last['loss']:.3f}")


if __name__ == "__main__":
  main()
