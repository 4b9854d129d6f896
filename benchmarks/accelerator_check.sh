#!/usr/bin/env bash
# One prepared accelerator session (GPU/TPU host with JAX installed): throughput of every model,
# the profile of one Sketchy step, and an end-to-end run of the main job. Writes into ${OUT:-/tmp/out}.
#   bash benchmarks/accelerator_check.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $py -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"
timeout 200 $py benchmarks/train_throughput.py --models=sketchy --steps_per_call=1,20 --dtypes=float32,bfloat16 2>&1 | grep -v "^WARNING" | tee "$OUT/throughput_sketchy.txt"
timeout 200 $py benchmarks/train_throughput.py --models=mnist_cdcb,digits_cdcb --steps_per_call=1 --dtypes=float32,bfloat16 2>&1 | grep -v "^WARNING" | tee "$OUT/throughput_images.txt"
timeout 100 $py benchmarks/profile_step.py --model=sketchy 2>&1 | grep -v "^WARNING" | tee "$OUT/profile_sketchy.txt"
( time timeout 150 $py train.py --config=configs/digits_cdcb.py --workdir=/tmp/run_dc --config.training.progress_bar=off ) 2>&1 | grep -E "step 2000|eval at step 2000|real" | cut -c1-400 | tee "$OUT/main_job.txt"
