"""3D car renderings, 256x256, flat shared latent (SPEC §3c, §4, §5c).

  python train.py --config=configs/cars.py --workdir=runs/cars

Needs the car_NNN_mesh.mat files under data/cars (see README). Batch 8, 50
epochs (the reference keeps a checkpoint every 50); translation grids on the test cars.
"""
from configs import common


def get_config():
  return common.image_recipe("cars", "flat", beta=0.02, recon_weight=1000.0,
                             annealing_rate=100.0, num_epochs=50, evals=("translation_grid",))
