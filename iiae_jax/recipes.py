"""The paper's recipes as ConfigDicts (docs/method.md §3, §4), importable from the installed package.

    from iiae_jax import recipes
    config = recipes.sketchy(split=1)          # what configs/sketchy.py gives train.py
    config = recipes.get("digits_cdcb")        # any recipe by name

Every group lists all of its fields (a locked ConfigDict only takes
overrides of fields it has); the optional ones start from the defaults of
`iiae_jax.config`, and a recipe sets what the paper (or the offline quick
start) sets. `configs/*.py` are the thin files that `train.py --config=`
reads: each calls one function here.
"""
from typing import Any, Callable, Dict, Sequence

import ml_collections

from iiae_jax import config as config_lib

# The reference's training length for every image dataset (its run_cross_vae.py's max_steps;
# its README's commands set no max_epochs). The KL annealing (ar 25000) assumes that many steps.
REFERENCE_STEPS = 1_012_000

_IMAGE_FIELDS = ("resolution", "channels", "latent_resolution", "channel_cap", "dropout_rate")
_FEATURE_FIELDS = ("x_dim", "y_dim", "output_relu")


def _group(cls, **values) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(config_lib.defaults(cls), **values))


def model_features(x_dim: int = 512, y_dim: int = 512, num_classes: int = 0) -> ml_collections.ConfigDict:
  """The feature-vector IIAE (§3a) at the reference's sizes."""
  return model("features", x_dim=x_dim, y_dim=y_dim, num_classes=num_classes, exclusive_width=128,
               shared_width=128, exclusive_dim=64, shared_dim=64, decoder_width=128)


def model_images(architecture: str = "spatial", resolution: int = 256, latent_resolution: int = 8,
                 shared_dim: int = 128) -> ml_collections.ConfigDict:
  """The image IIAE, spatial (§3b) or flat (§3c) shared latent, at the reference's sizes."""
  return model(architecture, resolution=resolution, channels=3, latent_resolution=latent_resolution,
               exclusive_width=32, shared_width=32, exclusive_dim=8, shared_dim=shared_dim,
               decoder_width=64)


def model(architecture: str, **values) -> ml_collections.ConfigDict:
  """config.model: the fields of `architecture` (features or images) with `values` set."""
  unused = _IMAGE_FIELDS if architecture == "features" else _FEATURE_FIELDS
  fields = {k: v for k, v in config_lib.defaults(config_lib.ModelConfig).items() if k not in unused}
  return ml_collections.ConfigDict(dict(fields, architecture=architecture, **values))


def loss(beta: float, recon_weight: float, recon: str, annealing_rate: float, **values) -> ml_collections.ConfigDict:
  """config.loss: the weights of the objective (§2)."""
  return _group(config_lib.LossConfig, beta=beta, recon_weight=recon_weight, recon=recon,
                annealing_rate=annealing_rate, **values)


def data(name: str, **options) -> ml_collections.ConfigDict:
  """config.data: which dataset, where it lives and how it is read (`iiae_jax.data.load`)."""
  return _group(config_lib.DataConfig, name=name, options=ml_collections.ConfigDict(options))


def default() -> ml_collections.ConfigDict:
  """Every group: the Sketchy networks and weights (§3a, §4), no evaluations; the recipes change a few fields."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data("sketchy", sketchy_split=1, feature_dim=512)
  config.model = model_features()
  config.loss = loss(beta=0.5, recon_weight=10.0, recon="l2", annealing_rate=2000.0)
  config.optimizer = _group(config_lib.OptimizerConfig, learning_rate=2e-4)
  config.training = _group(config_lib.TrainingConfig, batch_size=100, num_epochs=10, log_every=100,
                           checkpoint_every=1000)
  config.evals = ml_collections.ConfigDict()
  config.distributed = _group(config_lib.DistributedConfig)
  return config


def sketchy(split: int = 1) -> ml_collections.ConfigDict:
  """Sketchy Extended, zero-shot sketch-based image retrieval (§3a, §4, §5a); split 1 or 2."""
  split = int(split)
  if split not in (1, 2):
    raise config_lib.ConfigError(f"Sketchy split must be 1 or 2, got {split}")
  classes = 100 if split == 1 else 104
  config = default()
  config.model = model_features(512, 512, num_classes=classes)
  config.training.batch_size = classes  # one pair per training class (§4)
  # Ten steps per compiled call (lax.scan over on-device sampled batches): 36% faster on a
  # 2-core CPU (benchmarks/train_throughput.py); the parameters equal those of one step per call.
  config.training.steps_per_call = 10
  config.data.options.sketchy_split = split
  config.evals.zs_retrieval = dict(type="zs_retrieval", split="test", ks=(100,) if split == 1 else (200,))
  return config


def image_recipe(name: str, architecture: str, beta: float, recon_weight: float, annealing_rate: float,
                 evals: Sequence[str] = ("paired_retrieval",), eval_every: int = 0,
                 select_from_epoch: int = 0, num_epochs: int = 0) -> ml_collections.ConfigDict:
  """§4 for the 256x256 image datasets (§3b/§3c): dataset, model, loss, batch 8, evals.

  Trains the reference's REFERENCE_STEPS steps (`num_epochs` > 0: that many
  epochs instead). During training paired retrieval runs on the validation
  split every `eval_every` steps (the reference's save_freq), and the best
  checkpoint by the §4 rule among those from epoch `select_from_epoch` on is
  kept under <workdir>/best; eval.py reports it on the test split (§5b).
  Translation grids (§5c) run on the test split.
  """
  config = default()
  config.data = data(name, resolution=256)
  config.model = model_images(architecture, resolution=256, latent_resolution=8)
  config.loss = loss(beta=beta, recon_weight=recon_weight, recon="l1", annealing_rate=annealing_rate)
  config.training.batch_size = 8
  # One length, the other 0 (num_steps > 0 wins, with a warning, when a user sets both).
  config.training.num_steps = 0 if num_epochs > 0 else REFERENCE_STEPS
  config.training.num_epochs = num_epochs
  if "paired_retrieval" in evals:
    config.training.eval_every = eval_every
    config.training.select_from_epoch = select_from_epoch
    config.data.valid_split = "valid"
    config.evals.paired_retrieval = dict(type="paired_retrieval", split="test")
  if "translation_grid" in evals:
    config.evals.translation_grid = dict(type="translation_grid", split="test", num_examples=8, num_samples=4)
  return config


def mnist_cdcb() -> ml_collections.ConfigDict:
  return image_recipe("mnist_cdcb", "spatial", beta=0.2, recon_weight=1000.0, annealing_rate=25000.0,
                      evals=("paired_retrieval", "translation_grid"), eval_every=5000, select_from_epoch=6)


def facades() -> ml_collections.ConfigDict:
  return image_recipe("facades", "spatial", beta=0.001, recon_weight=1000.0, annealing_rate=25000.0,
                      eval_every=100, select_from_epoch=299)


def maps() -> ml_collections.ConfigDict:
  return image_recipe("maps", "spatial", beta=0.02, recon_weight=20000.0, annealing_rate=25000.0,
                      eval_every=137, select_from_epoch=399)


def cars() -> ml_collections.ConfigDict:
  config = image_recipe("cars", "flat", beta=0.02, recon_weight=1000.0, annealing_rate=100.0,
                        evals=("translation_grid",), num_epochs=500)
  config.training.keep_every_epochs = 50  # §4: a checkpoint every 50 epochs
  return config


def digits_cdcb() -> ml_collections.ConfigDict:
  """Offline MNIST-CDCB-style pairs (no download): 32x32, spatial z_s, CPU-sized widths."""
  config = default()
  config.data = data("digits_cdcb", resolution=32)
  config.data.valid_split = "valid"
  config.model = model_images("spatial", resolution=32, latent_resolution=4)
  config.model.update(dict(exclusive_width=16, shared_width=16, decoder_width=16))  # 256x256: 32/32/64
  config.loss = loss(beta=0.2, recon_weight=1000.0, recon="l1", annealing_rate=500.0)
  config.training.batch_size = 32
  config.training.num_steps, config.training.num_epochs = 2000, 0
  config.training.log_every = 100
  config.training.checkpoint_every = 500
  config.training.eval_every = 1000
  config.evals.paired_retrieval = dict(type="paired_retrieval", split="test")
  config.evals.disentanglement = dict(type="disentanglement", split="test", train_split="valid")
  config.evals.translation_grid = dict(type="translation_grid", split="test", num_examples=8, num_samples=4)
  return config


def digits_zs() -> ml_collections.ConfigDict:
  """Offline zero-shot retrieval (no download): 7 seen / 3 unseen digit classes, the §3a model."""
  config = default()
  config.data = data("digits_zs")
  config.model = model_features(x_dim=256, y_dim=432)
  # Pixel features in [0, 1] are far smaller than VGG features: a larger
  # reconstruction weight keeps the latents from collapsing onto the prior.
  config.loss = loss(beta=0.5, recon_weight=3000.0, recon="l2", annealing_rate=500.0)
  config.training.batch_size = 7          # one sketch and one photo of each seen class
  config.training.num_steps, config.training.num_epochs = 3000, 0
  config.training.log_every = 250
  config.training.checkpoint_every = 1000
  config.evals.zs_retrieval = dict(type="zs_retrieval", split="test", ks=(5, 50))          # unseen
  config.evals.zs_retrieval_seen = dict(type="zs_retrieval", split="train", ks=(5, 50))    # seen
  return config


RECIPES: Dict[str, Callable[..., ml_collections.ConfigDict]] = {
    "sketchy": sketchy, "mnist_cdcb": mnist_cdcb, "facades": facades, "maps": maps, "cars": cars,
    "digits_cdcb": digits_cdcb, "digits_zs": digits_zs,
}


def get(name: str, *args: Any) -> ml_collections.ConfigDict:
  """The recipe `name` (a key of RECIPES), e.g. get("sketchy", 2)."""
  if name not in RECIPES:
    raise config_lib.ConfigError(f"unknown recipe {name!r}; the recipes are {sorted(RECIPES)}")
  return RECIPES[name](*args)
