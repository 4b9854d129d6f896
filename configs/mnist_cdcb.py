"""MNIST-CDCB paired images, 256x256, spatial shared latent (docs/method.md §3b, §4, §5b, §5c).

  python train.py --config=configs/mnist_cdcb.py --workdir=runs/mnist_cdcb
  python eval.py  --config=configs/mnist_cdcb.py --workdir=runs/mnist_cdcb --checkpoint=best

Needs the pix2pix pairs under data/mnist_cdcb (see README). Batch 8, the
reference's 1,012,000 steps; paired retrieval on the validation split every
5,000 steps (the reference's save_freq) picks the best checkpoint from epoch 6
on. Runtime: meant for a GPU (about 7 s per step on a
2-core CPU; no GPU timing recorded yet). Expected (paper): shared paired
accuracy ~99.7% both ways, exclusive near chance (0.01%).
"""
from iiae_jax import recipes


def get_config():
  return recipes.mnist_cdcb()
