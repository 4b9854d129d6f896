"""MNIST-CDCB paired images, 256x256, spatial shared latent (SPEC §3b, §4, §5b, §5c).

  python train.py --config=configs/mnist_cdcb.py --workdir=runs/mnist_cdcb
  python eval.py  --config=configs/mnist_cdcb.py --workdir=runs/mnist_cdcb --checkpoint=best

Needs the pix2pix pairs under data/mnist_cdcb (see README). Batch 8, the
reference's 1,012,000 steps; paired retrieval on the validation split every
5,000 steps (the reference's save_freq) picks the best checkpoint from epoch 6
on. Runtime: meant for a GPU (about 7 s per step on a
2-core CPU; no GPU timing recorded yet). Expected (paper): shared paired
accuracy ~99.7% both ways, exclusive near chance (0.01%).
"""
from configs import common


def get_config():
  return common.image_recipe("mnist_cdcb", "spatial", beta=0.2, recon_weight=1000.0,
                             annealing_rate=25000.0, evals=("paired_retrieval", "translation_grid"),
                             eval_every=5000, select_from_epoch=6)
