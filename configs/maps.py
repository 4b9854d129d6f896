"""pix2pix Maps, 256x256, spatial shared latent (docs/method.md §3b, §4, §5b).

  python train.py --config=configs/maps.py --workdir=runs/maps
  python eval.py  --config=configs/maps.py --workdir=runs/maps --checkpoint=best

Needs the pix2pix pairs under data/maps (see README; the release's val/ is the
test split, and training pairs 1-800 validate, as in the reference). Batch 8,
the reference's 1,012,000 steps; paired retrieval on the validation split every
137 steps (an epoch, the reference's save_freq) picks the best checkpoint from
epoch 399 on. Runtime: meant
for a GPU (about 7 s per step on a 2-core CPU; no GPU timing recorded yet).
Expected (paper): shared S->M 96.6%, M->S 97.3% (exclusive 0.09%, 0.0%).
"""
from iiae_jax import recipes


def get_config():
  return recipes.maps()
