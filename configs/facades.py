"""pix2pix Facades, 256x256, spatial shared latent (SPEC §3b, §4, §5b).

  python train.py --config=configs/facades.py --workdir=runs/facades

Needs the pix2pix pairs under data/facades (see README). Batch 8; the reference
selects checkpoints from epoch 299 on (paper: F->L 96.2%, L->F 99.1% shared).
"""
from configs import common


def get_config():
  return common.image_recipe("facades", "spatial", beta=0.001, recon_weight=1000.0,
                             annealing_rate=25000.0, num_epochs=300, evals=("paired_retrieval",),
                             select_from_epoch=299)
