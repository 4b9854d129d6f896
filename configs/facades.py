"""pix2pix Facades, 256x256, spatial shared latent (docs/method.md §3b, §4, §5b).

  python train.py --config=configs/facades.py --workdir=runs/facades
  python eval.py  --config=configs/facades.py --workdir=runs/facades --checkpoint=best

Needs the pix2pix pairs under data/facades (see README). Batch 8, the
reference's 1,012,000 steps; paired retrieval on the validation split every 100
steps (2 epochs, the reference's save_freq) picks the best checkpoint from
epoch 299 on. Runtime: meant for a GPU
(about 7 s per step on a 2-core CPU; no GPU timing recorded yet). Expected
(paper): shared F->L 96.2%, L->F 99.1% (exclusive 0.94%).
"""
from iiae_jax import recipes


def get_config():
  return recipes.facades()
