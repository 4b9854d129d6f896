"""Offline zero-shot retrieval on scikit-learn's digits (SPEC §5a protocol, no download).

  python train.py --config=configs/digits_zs.py --workdir=runs/digits_zs
  python eval.py  --config=configs/digits_zs.py --workdir=runs/digits_zs

Sketch-like outlines (X, 256-d) and filled, coloured photos (Y, 432-d) of 7
seen digit classes train the Sketchy feature model (SPEC §3a, joint shared
posterior, batch = one pair per class); the 3 unseen classes are retrieved.
Runtime: about 1.5 minutes for both commands on a 2-core CPU (3,000 steps).
Expected: seen classes mAP@all ~0.56, P@5 ~0.80; unseen mAP@all ~0.37, P@5
~0.37 (chance ~0.34: raw pixels barely transfer to new classes).
"""
from configs import common


def get_config():
  config = common.get_config()
  config.data = common.data("digits_zs")
  config.model = common.model_features(x_dim=256, y_dim=432)
  # Pixel features in [0, 1] are far smaller than VGG features: a larger
  # reconstruction weight keeps the latents from collapsing onto the prior.
  config.loss = common.loss(beta=0.5, recon_weight=3000.0, recon="l2", annealing_rate=500.0)
  config.training.batch_size = 7          # one sketch and one photo of each seen class
  config.training.num_steps, config.training.num_epochs = 3000, 0
  config.training.log_every = 250
  config.training.checkpoint_every = 1000
  config.evals.zs_retrieval = dict(type="zs_retrieval", split="test", ks=(5, 50))          # unseen
  config.evals.zs_retrieval_seen = dict(type="zs_retrieval", split="train", ks=(5, 50))    # seen
  return config
