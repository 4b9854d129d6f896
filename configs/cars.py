"""3D car renderings, 256x256, flat shared latent (docs/method.md §3c, §4, §5c).

  python train.py --config=configs/cars.py --workdir=runs/cars
  python eval.py  --config=configs/cars.py --workdir=runs/cars [--checkpoint=STEP]

Needs the car_NNN_mesh.mat files under data/cars (see README). Batch 8, 500
epochs (the reference's 1,012,000 steps at its 2,024 steps per epoch; cars
1-191 give 2,196) with a checkpoint kept every 50 epochs (docs/method.md §4; no
retrieval to select on). Runtime: meant for a GPU (no timing
recorded yet). Expected: qualitative, as in the paper: translation and analogy
grids of the test cars (192-199), z_s carrying the car and Y's exclusive code
its viewpoint.
"""
from iiae_jax import recipes


def get_config():
  return recipes.cars()
