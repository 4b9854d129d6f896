"""Cars (3D renderings), 256x256, flat shared latent (SPEC §3c, §4).

  python train.py --config=configs/cars.py --workdir=runs/cars
"""
from configs import common


def get_config():
  config = common.get_config()
  config.model = common.model_images("flat", resolution=256, latent_resolution=8, shdim=128)
  config.loss = common.loss(beta=0.02, recon_weight=1000.0, recon="l1", annealing_rate=100.0)
  return config
