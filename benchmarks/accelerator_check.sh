#!/usr/bin/env bash
# One prepared GPU session (a host with JAX for CUDA installed): throughput of every model in
# float32 and bfloat16 (with the fraction of peak on H100/H200/A100), the float32 profile of one
# Sketchy step and the full float32 Sketchy schedule. Writes into ${OUT:-/tmp/out}
# (about 7 minutes at most).
#   bash benchmarks/accelerator_check.sh
set -u
cd "$(dirname "$0")/.."   # the repository root
# One device: Sketchy's batch of 100 does not split over 8 (CUDA_VISIBLE_DEVICES overrides).
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
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
