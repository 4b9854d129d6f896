"""Defaults shared by every config: the Sketchy feature model and SPEC §4's recipe.

Dataset configs import this and override a few fields. Not a runnable config
by itself; see configs/digits_cdcb.py for the offline quick start.
"""
import ml_collections


def model_features(x_dim=512, y_dim=512, num_classes=0):
  """SPEC §3a: the feature-vector IIAE (zero-shot sketch-based retrieval)."""
  return ml_collections.ConfigDict(dict(
      architecture="features", x_dim=x_dim, y_dim=y_dim,
      neef=128, nsef=128, exdim=64, shdim=64, ndf=128,
      shared_posterior="joint", prior_expert=True, num_classes=num_classes,
      output_relu=False, dtype="float32"))


def model_images(architecture="spatial", resolution=256, latent_resolution=8, shdim=128):
  """SPEC §3b ("spatial") and §3c ("flat"): the image IIAE."""
  return ml_collections.ConfigDict(dict(
      architecture=architecture, resolution=resolution, channels=3,
      latent_resolution=latent_resolution, channel_cap=8,
      neef=32, nsef=32, exdim=8, shdim=shdim, ndf=64, dropout_rate=0.5,
      shared_posterior="joint", prior_expert=True, num_classes=0, dtype="float32"))


def loss(beta, recon_weight, recon, annealing_rate, lam=1.0, class_weight=0.0):
  """SPEC §2 weights."""
  return ml_collections.ConfigDict(dict(
      beta=beta, lam=lam, recon_weight=recon_weight, recon=recon,
      annealing_rate=annealing_rate, class_weight=class_weight))


def data(name, **options):
  """Which dataset, where it lives, and how it is read (see iiae_jax.data.load)."""
  return ml_collections.ConfigDict(dict(
      name=name, data_dir="", source="files", train_split="train",
      valid_split="", flip=False, options=ml_collections.ConfigDict(options)))


# The reference's training length for every image dataset (run_cross_vae.py's max_steps; its
# README's commands set no max_epochs). The KL annealing (ar 25000) assumes that many steps.
REFERENCE_STEPS = 1_012_000


def image_recipe(name, architecture, beta, recon_weight, annealing_rate, evals=("paired_retrieval",),
                 eval_every=0, select_from_epoch=0, num_epochs=0):
  """SPEC §4 for the 256x256 image datasets (§3b/§3c): dataset, model, loss, batch 8, evals.

  Trains the reference's REFERENCE_STEPS steps (`num_epochs` > 0: that many
  epochs instead). During training paired
  retrieval runs on the validation split every `eval_every` steps (the
  reference's save_freq), and the best checkpoint by the §4 rule among those
  from epoch `select_from_epoch` on is kept under <workdir>/best; eval.py
  reports it on the test split (§5b). Translation grids (§5c) run on the test
  split.
  """
  config = get_config()
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


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data("sketchy", sketchy_split=1, feature_dim=512)
  config.model = model_features()
  config.loss = loss(beta=0.5, recon_weight=10.0, recon="l2", annealing_rate=2000.0)
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=2e-4, b1=0.5, b2=0.999, eps=1e-8, flatten=False))
  config.training = ml_collections.ConfigDict(dict(
      batch_size=100,        # global, split across every device of every host
      num_steps=0,           # 0: derive from num_epochs
      num_epochs=10,
      steps_per_call=1,      # optimiser steps per compiled call (lax.scan)
      resident_data=True,    # keep the training set on the accelerator when it fits
      log_every=100,
      checkpoint_every=1000,
      max_to_keep=2,
      keep_every_epochs=0,   # > 0: also keep every checkpoint at a multiple of this many epochs
      eval_every=0,          # steps between evaluations; 0: only at the end
      eval_every_epochs=0,   # epochs between evaluations, instead of eval_every (set one of them)
      select_from_epoch=0,   # evaluations before the end of this epoch do not compete for <workdir>/best
      progress_bar="auto",   # "auto" (a terminal), "on" or "off"
  ))
  config.evals = ml_collections.ConfigDict()
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=1, process_id=0,
      # A process whose peer (or coordinator) has been silent this long stops with an error
      # instead of waiting forever in a collective.
      heartbeat_timeout_seconds=60,
      # How long a finished process waits at exit for the others to finish (JAX's default).
      shutdown_timeout_seconds=300))
  return config
