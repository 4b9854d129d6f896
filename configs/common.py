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


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_features()
  config.loss = loss(beta=0.5, recon_weight=10.0, recon="l2", annealing_rate=2000.0)
  return config
