"""The IIAE networks of docs/method.md §3 as Flax linen modules.

Three architectures share one composition (`IIAE`):
- "features": feature vectors (Sketchy VGG features, docs/method.md §3a);
- "spatial":  images with a spatial shared latent (MNIST-CDCB, Facades, Maps, §3b);
- "flat":     images with a flat shared latent (Cars, §3c).

Randomness is per example: every random draw of a training forward pass
(latent noise, dropout masks) comes from one key per example, so results do
not depend on how a batch is split across devices.
"""
import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from iiae_jax import distributions as D
from iiae_jax import layers
from iiae_jax.config import ModelConfig
from iiae_jax.distributions import Gaussian

LEAK = 0.2
# Salts that separate the random streams drawn from one example key.
_NOISE_SALT = {"z_x": 1, "z_y": 2, "z_s": 3}
_DROPOUT_SALT = {"x": 100, "y": 200}


@dataclasses.dataclass(frozen=True)
class _Ctx:
  """What every layer of one forward pass needs to know."""
  train: bool
  axis_name: Optional[str]
  dtype: Any
  keys: Optional[jax.Array] = None  # (B, 2) per-example keys, training only


def _batch_norm(ctx: _Ctx, name=None) -> nn.BatchNorm:
  # flax: running = momentum * running + (1 - momentum) * batch, as docs/method.md §3.
  return nn.BatchNorm(use_running_average=not ctx.train, momentum=0.9, epsilon=1e-5,
                      scale_init=layers.bn_scale_init, axis_name=ctx.axis_name if ctx.train else None,
                      dtype=ctx.dtype, name=name)


def _dense(n, ctx, before_norm=False):
  if before_norm:
    return layers.PreNorm("dense", n, ctx.dtype)
  return layers.dense(n, ctx.dtype)


def _conv(n, ctx, before_norm=False):
  if before_norm:
    return layers.PreNorm("conv", n, ctx.dtype)
  return layers.conv(n, ctx.dtype)


def _conv_transpose(n, ctx, before_norm=False):
  if before_norm:
    return layers.PreNorm("conv_transpose", n, ctx.dtype)
  return layers.ConvTranspose(n, dtype=ctx.dtype)


def _split(h: jax.Array) -> Gaussian:
  """(mean | logvar) -> a float32 posterior; the logvar clip of docs/method.md §2 is exact under bfloat16 too."""
  mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
  return Gaussian(mean, D.clip_logvar(logvar))


def per_example_normal(keys: jax.Array, salt: int, shape: Sequence[int], dtype=jnp.float32):
  """Standard normal noise of `shape` per example, from per-example keys (B, ...)."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, salt), shape, dtype))(keys)


def _dropout(h: jax.Array, rate: float, ctx: _Ctx, salt: int) -> jax.Array:
  if not ctx.train or rate == 0.0:
    return h
  keep = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, salt), 1.0 - rate,
                                                  h.shape[1:]))(ctx.keys)
  return jnp.where(keep, h / (1.0 - rate), jnp.zeros_like(h))


class Block(nn.Module):
  """BatchNorm -> LeakyReLU -> layer: the "Block(n)" of docs/method.md §3."""
  features: int
  conv: bool = False

  @nn.compact
  def __call__(self, h, ctx: _Ctx):
    h = nn.leaky_relu(_batch_norm(ctx)(h), LEAK)
    return (_conv if self.conv else _dense)(self.features, ctx)(h)


# --------------------------------------------------------------------------
# Feature vectors (docs/method.md §3a)


class FeatureEncoder(nn.Module):
  """Dense(4w) -> Block(2w) -> Block(2z) -> (mean | logvar); also returns h.

  Used for both q(z_x|x) and r^x(z_s|x); h, the activation after the first
  BatchNorm -> LeakyReLU, feeds the joint shared posterior.
  """
  width: int
  latent: int

  @nn.compact
  def __call__(self, v, ctx: _Ctx):
    h = nn.leaky_relu(_batch_norm(ctx)(_dense(4 * self.width, ctx, before_norm=True)(v)), LEAK)
    out = Block(2 * self.latent)(_dense(2 * self.width, ctx, before_norm=True)(h), ctx)
    return _split(out), h


class FeatureJoint(nn.Module):
  """q(z_s|x,y): Dense(4 shared_width) on concat(h_x, h_y) -> Block(2 shared_dim) -> split."""
  width: int
  latent: int

  @nn.compact
  def __call__(self, h_x, h_y, ctx: _Ctx):
    h = _dense(4 * self.width, ctx, before_norm=True)(jnp.concatenate([h_x, h_y], axis=-1))
    return _split(Block(2 * self.latent)(h, ctx))


class FeatureDecoder(nn.Module):
  """p(x|z_x,z_s): concat -> Dense(decoder_width) -> BN -> ReLU -> Dense(d) [-> ReLU]."""
  width: int
  out_dim: int
  output_relu: bool = False

  @nn.compact
  def __call__(self, z_s, z_excl, ctx: _Ctx, salt: int = 0):
    h = _dense(self.width, ctx, before_norm=True)(jnp.concatenate([z_s, z_excl], axis=-1))
    out = _dense(self.out_dim, ctx)(nn.relu(_batch_norm(ctx)(h)))
    return nn.relu(out) if self.output_relu else out


# --------------------------------------------------------------------------
# Images (docs/method.md §3b, §3c)


def stage_multipliers(resolution: int, latent_resolution: int, cap: int = 8) -> Tuple[int, ...]:
  """Channel multipliers of the shared encoder's convolutions.

  At 256 -> 8 this is (1, 2, 4, 8, 8), the reference layout; smaller images use
  fewer stages with the same pattern: doubling, capped, the last repeated.
  """
  n = int(round(math.log2(resolution / latent_resolution)))
  if n < 2 or latent_resolution * 2 ** n != resolution:
    raise ValueError(f"resolution {resolution} must be latent_resolution {latent_resolution} "
                     "times a power of two, at least 4")
  mults = [min(2 ** i, cap) for i in range(n - 1)]
  return tuple(mults + [mults[-1]])


class ConvStack(nn.Module):
  """Conv(m0 w) -> Block(m1 w) -> ...: strided 4x4 convolutions halving the size.

  Returns the last convolution's output and its input h (after BN -> LeakyReLU).
  `norm_after`: whether the caller batch-normalises the output.
  """
  width: int
  multipliers: Tuple[int, ...]
  norm_after: bool = False

  @nn.compact
  def __call__(self, image, ctx: _Ctx):
    last = len(self.multipliers) - 1
    out = _conv(self.multipliers[0] * self.width, ctx, before_norm=last > 0 or self.norm_after)(image)
    h = image
    for i, m in enumerate(self.multipliers[1:], start=1):
      h = nn.leaky_relu(_batch_norm(ctx)(out), LEAK)
      out = _conv(m * self.width, ctx, before_norm=i < last or self.norm_after)(h)
    return out, h


class ImageExclusiveEncoder(nn.Module):
  """q(z_x|x): conv stack to 2L x 2L -> BN -> LeakyReLU -> flatten -> Dense(2 exclusive_dim)."""
  width: int
  multipliers: Tuple[int, ...]
  latent: int

  @nn.compact
  def __call__(self, image, ctx: _Ctx):
    out, _ = ConvStack(self.width, self.multipliers, norm_after=True)(image, ctx)
    h = nn.leaky_relu(_batch_norm(ctx)(out), LEAK)
    return _split(_dense(2 * self.latent, ctx)(h.reshape(h.shape[0], -1))), None


class SpatialSharedEncoder(nn.Module):
  """r^x(z_s|x): conv stack to L x L; channels split into mean | logvar."""
  width: int
  multipliers: Tuple[int, ...]

  @nn.compact
  def __call__(self, image, ctx: _Ctx):
    out, h = ConvStack(self.width, self.multipliers)(image, ctx)
    return _split(out), h


class SpatialJoint(nn.Module):
  """q(z_s|x,y): one Conv on concat(h_x, h_y), split along channels."""
  channels: int

  @nn.compact
  def __call__(self, h_x, h_y, ctx: _Ctx):
    return _split(_conv(self.channels, ctx)(jnp.concatenate([h_x, h_y], axis=-1)))


class FlatSharedEncoder(nn.Module):
  """r^x(z_s|x), Cars: conv stack -> BN -> LeakyReLU -> flatten (h) -> Dense -> Block."""
  width: int
  multipliers: Tuple[int, ...]
  latent: int

  @nn.compact
  def __call__(self, image, ctx: _Ctx):
    out, _ = ConvStack(self.width, self.multipliers, norm_after=True)(image, ctx)
    h = nn.leaky_relu(_batch_norm(ctx)(out), LEAK)
    h = h.reshape(h.shape[0], -1)
    out = Block(2 * self.latent)(_dense(2 * self.latent, ctx, before_norm=True)(h), ctx)
    return _split(out), h


class FlatJoint(nn.Module):
  """q(z_s|x,y), Cars: Dense(2 shared_dim) on concat(h_x, h_y) -> Block(2 shared_dim)."""
  latent: int

  @nn.compact
  def __call__(self, h_x, h_y, ctx: _Ctx):
    h = _dense(2 * self.latent, ctx, before_norm=True)(jnp.concatenate([h_x, h_y], axis=-1))
    return _split(Block(2 * self.latent)(h, ctx))


class ImageDecoder(nn.Module):
  """p(x|z_x,z_s): [ConvTranspose -> BN -> Dropout -> ReLU] x (n-1) -> ConvTranspose -> tanh.

  A spatial z_s gets z_x tiled over its grid; a flat z_s (Cars) first goes
  through Dense -> BN -> Dropout -> ReLU -> reshape to the latent grid.
  """
  width: int
  multipliers: Tuple[int, ...]  # of the hidden up-sampling layers, widest first
  channels: int
  latent_resolution: int
  flat: bool = False
  dropout_rate: float = 0.5
  dropout_layers: int = 2

  @nn.compact
  def __call__(self, z_s, z_excl, ctx: _Ctx, salt: int = 0):
    g = self.latent_resolution
    if self.flat:
      c = self.multipliers[0] * self.width
      h = _dense(g * g * c, ctx, before_norm=True)(jnp.concatenate([z_s, z_excl], axis=-1))
      h = nn.relu(_dropout(_batch_norm(ctx)(h), self.dropout_rate, ctx, salt))
      h = h.reshape(h.shape[0], g, g, c)
    else:
      tiled = jnp.broadcast_to(z_excl[:, None, None, :], z_s.shape[:3] + z_excl.shape[-1:])
      h = jnp.concatenate([z_s, tiled.astype(z_s.dtype)], axis=-1)
    for i, m in enumerate(self.multipliers):
      h = _batch_norm(ctx)(_conv_transpose(m * self.width, ctx, before_norm=True)(h))
      if i < self.dropout_layers:
        h = _dropout(h, self.dropout_rate, ctx, salt + 1 + i)
      h = nn.relu(h)
    return jnp.tanh(_conv_transpose(self.channels, ctx)(h))


# --------------------------------------------------------------------------
# The composition


class IIAE(nn.Module):
  """Interaction Information Auto-Encoder over paired domains X and Y.

  `config` (a checked `ModelConfig`; `build_model` makes one from
  `config.model`) decides the architecture and every size. `x_shape` /
  `y_shape` are the per-example input shapes: (d,) for features, (H, W, C)
  for images.
  """
  config: ModelConfig

  @property
  def architecture(self) -> str:
    return self.config.architecture

  @property
  def x_shape(self) -> Tuple[int, ...]:
    return self.config.input_shapes[0]

  @property
  def y_shape(self) -> Tuple[int, ...]:
    return self.config.input_shapes[1]

  @property
  def exclusive_dim(self) -> int:
    return self.config.exclusive_dim

  @property
  def num_classes(self) -> int:
    return self.config.num_classes

  @property
  def dtype(self):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[self.config.dtype]

  def setup(self):
    c, a = self.config, self.config.architecture
    if a == "features":
      self.exclusive_encoder_x = FeatureEncoder(c.exclusive_width, c.exclusive_dim)
      self.exclusive_encoder_y = FeatureEncoder(c.exclusive_width, c.exclusive_dim)
      self.shared_encoder_x = FeatureEncoder(c.shared_width, c.shared_dim)
      self.shared_encoder_y = FeatureEncoder(c.shared_width, c.shared_dim)
      if c.shared_posterior == "joint":
        self.joint_encoder = FeatureJoint(c.shared_width, c.shared_dim)
      self.decoder_x = FeatureDecoder(c.decoder_width, self.x_shape[-1], c.output_relu)
      self.decoder_y = FeatureDecoder(c.decoder_width, self.y_shape[-1], c.output_relu)
    else:
      mults = stage_multipliers(c.resolution, c.latent_resolution, c.channel_cap)
      stem = mults[:-1]  # the exclusive encoder stops one stage earlier (at 2L x 2L)
      self.exclusive_encoder_x = ImageExclusiveEncoder(c.exclusive_width, stem, c.exclusive_dim)
      self.exclusive_encoder_y = ImageExclusiveEncoder(c.exclusive_width, stem, c.exclusive_dim)
      if a == "spatial":
        self.shared_encoder_x = SpatialSharedEncoder(c.shared_width, mults)
        self.shared_encoder_y = SpatialSharedEncoder(c.shared_width, mults)
        if c.shared_posterior == "joint":
          self.joint_encoder = SpatialJoint(mults[-1] * c.shared_width)
      else:
        self.shared_encoder_x = FlatSharedEncoder(c.shared_width, mults, c.shared_dim)
        self.shared_encoder_y = FlatSharedEncoder(c.shared_width, mults, c.shared_dim)
        if c.shared_posterior == "joint":
          self.joint_encoder = FlatJoint(c.shared_dim)
      up = tuple(reversed(stem))
      dec = lambda channels: ImageDecoder(c.decoder_width, up, channels, c.latent_resolution,
                                          flat=(a == "flat"), dropout_rate=c.dropout_rate)
      self.decoder_x = dec(self.x_shape[-1])
      self.decoder_y = dec(self.y_shape[-1])
    if c.num_classes:
      self.classifier = layers.dense(c.num_classes, self.dtype)

  # -- shapes -------------------------------------------------------------

  def _check(self, name: str, v: jax.Array, domain: str):
    self._parts(domain)  # a bad domain is named as such
    expected = self.x_shape if domain == "x" else self.y_shape
    if tuple(v.shape[1:]) != tuple(expected):
      what = (f"feature width: model.{domain}_dim" if self.architecture == "features"
              else "image size: model.resolution, model.channels")
      raise ValueError(f"{name} has shape {tuple(v.shape)}; the config expects (batch, "
                       f"{', '.join(map(str, expected))}) (wrong {what})")
    if not jnp.issubdtype(v.dtype, jnp.floating):
      raise ValueError(f"{name} has dtype {v.dtype}; the model takes floating-point inputs "
                       "(images scaled to [-1, 1], as the data loaders give them)")

  def _parts(self, domain: str):
    if domain not in ("x", "y"):
      raise ValueError(f"domain must be 'x' or 'y', got {domain!r}")
    if domain == "x":
      return self.exclusive_encoder_x, self.shared_encoder_x, self.decoder_x
    return self.exclusive_encoder_y, self.shared_encoder_y, self.decoder_y

  def _ctx(self, train, axis_name, keys=None):
    return _Ctx(train=train, axis_name=axis_name, dtype=self.dtype, keys=keys)

  # -- single-domain pieces (test-time inference) ---------------------------

  def encode_shared(self, v, domain: str = "x", train: bool = False, axis_name=None) -> Gaussian:
    """r^domain(z_s | v): the shared posterior inferred from one domain."""
    self._check(domain, v, domain)
    posterior, _ = self._parts(domain)[1](v, self._ctx(train, axis_name))
    return posterior

  def encode_exclusive(self, v, domain: str = "x", train: bool = False, axis_name=None) -> Gaussian:
    """q(z_domain | v): the exclusive posterior."""
    self._check(domain, v, domain)
    posterior, _ = self._parts(domain)[0](v, self._ctx(train, axis_name))
    return posterior

  def decode(self, z_s, z_exclusive, domain: str = "x"):
    """p(domain | z_domain, z_s) in evaluation mode (running statistics, no dropout)."""
    return self._parts(domain)[2](z_s, z_exclusive, self._ctx(False, None)).astype(jnp.float32)

  # -- the paired forward pass -----------------------------------------------

  def __call__(self, x, y, *, train: bool = False, axis_name: Optional[str] = None,
               example_keys: Optional[jax.Array] = None):
    """Encodes the pair, forms q(z_s|x,y), samples (training) and decodes.

    Training mode samples every latent, applies dropout and uses and updates
    batch statistics (synchronised over `axis_name` when given); evaluation
    mode uses the means, no dropout and the running statistics. Random draws
    come from `example_keys` (shape (B, 2), one key per example) or, when not
    given, from the 'sample' RNG stream.
    """
    self._check("x", x, "x")
    self._check("y", y, "y")
    if x.shape[0] != y.shape[0]:
      raise ValueError(f"x and y must hold the same number of examples (paired batch): "
                       f"x has shape {tuple(x.shape)}, y has shape {tuple(y.shape)}")
    if train and example_keys is None:
      example_keys = jax.random.split(self.make_rng("sample"), x.shape[0])
    if example_keys is not None and example_keys.shape[0] != x.shape[0]:
      raise ValueError(f"example_keys has shape {tuple(example_keys.shape)}; expected one key "
                       f"per example ({x.shape[0]})")
    ctx = self._ctx(train, axis_name, example_keys)
    q_zx, _ = self.exclusive_encoder_x(x, ctx)
    q_zy, _ = self.exclusive_encoder_y(y, ctx)
    r_zs_x, h_x = self.shared_encoder_x(x, ctx)
    r_zs_y, h_y = self.shared_encoder_y(y, ctx)
    if self.config.shared_posterior == "joint":
      q_zs = self.joint_encoder(h_x, h_y, ctx)
    else:
      q_zs = D.product_of_experts([r_zs_x, r_zs_y], prior_expert=self.config.prior_expert)

    def latent(posterior, name):
      if not train:
        return posterior.mean
      eps = per_example_normal(example_keys, _NOISE_SALT[name], posterior.mean.shape[1:])
      return D.sample(posterior, eps)

    z_x, z_y, z_s = latent(q_zx, "z_x"), latent(q_zy, "z_y"), latent(q_zs, "z_s")
    out = {
        "q_zx": q_zx, "q_zy": q_zy, "q_zs": q_zs, "r_zs_x": r_zs_x, "r_zs_y": r_zs_y,
        "z_x": z_x, "z_y": z_y, "z_s": z_s,
        "x_recon": self.decoder_x(z_s, z_x, ctx, _DROPOUT_SALT["x"]).astype(jnp.float32),
        "y_recon": self.decoder_y(z_s, z_y, ctx, _DROPOUT_SALT["y"]).astype(jnp.float32),
    }
    if self.num_classes:
      out["logits"] = self.classifier(z_s.reshape(z_s.shape[0], -1)).astype(jnp.float32)
    return out


def input_shapes(model_config) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
  """The per-example shapes of x and y that `config.model` describes."""
  return ModelConfig.from_mapping(model_config).input_shapes


def build_model(model_config) -> IIAE:
  """The IIAE module that `config.model` (a ConfigDict, a dict or a ModelConfig) describes.

  Raises ConfigError naming every bad field (`iiae_jax.config.ModelConfig`
  lists the fields, their defaults and their meaning).
  """
  return IIAE(ModelConfig.from_mapping(model_config))
