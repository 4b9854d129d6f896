"""facades paired images, 256x256, spatial shared latent (SPEC §3b, §4).

  python train.py --config=configs/facades.py --workdir=runs/facades
"""
from configs import common


def get_config():
  config = common.get_config()
  config.model = common.model_images("spatial", resolution=256, latent_resolution=8)
  config.loss = common.loss(beta=0.001, recon_weight=1000.0, recon="l1", annealing_rate=25000.0)
  return config
