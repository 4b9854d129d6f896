"""mnist_cdcb paired images, 256x256, spatial shared latent (SPEC §3b, §4).

  python train.py --config=configs/mnist_cdcb.py --workdir=runs/mnist_cdcb
"""
from configs import common


def get_config():
  config = common.get_config()
  config.model = common.model_images("spatial", resolution=256, latent_resolution=8)
  config.loss = common.loss(beta=0.2, recon_weight=1000.0, recon="l1", annealing_rate=25000.0)
  return config
