"""Offline zero-shot retrieval on scikit-learn's digits (docs/method.md §5a protocol, no download).

  python train.py --config=configs/digits_zs.py --workdir=runs/digits_zs
  python eval.py  --config=configs/digits_zs.py --workdir=runs/digits_zs

Sketch-like outlines (X, 256-d) and filled, coloured photos (Y, 432-d) of 7
seen digit classes train the Sketchy feature model (docs/method.md §3a, joint shared
posterior, batch = one pair per class); the 3 unseen classes are retrieved.
Runtime: about 45 seconds for both commands on a 2-core CPU (3,000 steps).
Expected: seen classes mAP@all ~0.56, P@5 ~0.80; unseen mAP@all ~0.37, P@5
~0.37 (chance ~0.34: raw pixels barely transfer to new classes).
"""
from iiae_jax import recipes


def get_config():
  return recipes.digits_zs()
