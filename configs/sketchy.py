"""Sketchy Extended, zero-shot sketch-based image retrieval (docs/method.md §3a, §4, §5a).

  python train.py --config=configs/sketchy.py --workdir=runs/sketchy          # split 1
  python eval.py  --config=configs/sketchy.py --workdir=runs/sketchy
  python train.py --config=configs/sketchy.py:2 --workdir=runs/sketchy2       # split 2
  python eval.py  --config=configs/sketchy.py:2 --workdir=runs/sketchy2

Needs the reference release's VGG features under data/SketchyVGG (see README);
--config.data.name=synthetic_sketchy runs it on random features of the same
sizes. Runtime: split 1's 6,100 steps take about 2.5 minutes on a 2-core CPU
(benchmarks/sketchy_schedule.py), evaluation seconds. Expected (paper, split
1, 64-d z_s): mAP@all 0.573, P@100 0.659.
"""
from iiae_jax import recipes


def get_config(split="1"):
  return recipes.sketchy(int(split))
