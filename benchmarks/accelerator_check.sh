#!/usr/bin/env bash
# One prepared accelerator session (GPU/TPU host with JAX installed): throughput of every model,
# the profile of one Sketchy step and the full Sketchy schedule. Writes into ${OUT:-/tmp/out}
# (about 7 minutes at most).
#   bash benchmarks/accelerator_check.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $py -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"
timeout 120 $py benchmarks/train_throughput.py --models=sketchy --steps_per_call=1,20 --dtypes=float32,bfloat16 2>&1 | grep -v "^WARNING" | tee "$OUT/throughput_sketchy.txt"
timeout 120 $py benchmarks/train_throughput.py --models=mnist_cdcb,digits_cdcb --steps_per_call=1 --dtypes=float32,bfloat16 2>&1 | grep -v "^WARNING" | tee "$OUT/throughput_images.txt"
timeout 60 $py benchmarks/profile_step.py --model=sketchy 2>&1 | grep -v "^WARNING" | tee "$OUT/profile_sketchy.txt"
timeout 90 $py benchmarks/sketchy_schedule.py 2>&1 | grep -v "^WARNING" | tee "$OUT/schedule_sketchy.txt"
