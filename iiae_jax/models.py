"""The IIAE networks of SPEC §3 as Flax linen modules.

Three architectures share one composition (`IIAE`):
- "features": feature vectors (Sketchy VGG features, SPEC §3a);
- "spatial":  images with a spatial shared latent (MNIST-CDCB, Facades, Maps, §3b);
- "flat":     images with a flat shared latent (Cars, §3c).

Randomness is per example: every random draw of a training forward pass
(latent noise, dropout masks) comes from one key per example, so results do
not depend on how a batch is split across devices.
"""
import dataclasses
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from iiae_jax import distributions as D
from iiae_jax.distributions import Gaussian

ARCHITECTURES = ("features", "spatial", "flat")
SHARED_POSTERIORS = ("joint", "poe")
LEAK = 0.2
# Salts that separate the random streams drawn from one example key.
_NOISE_SALT = {"z_x": 1, "z_y": 2, "z_s": 3}
_DROPOUT_SALT = {"x": 100, "y": 200}


def _bn_scale_init(key, shape, dtype=jnp.float32):
  """Batch-norm scale initialised N(1, 0.02), as in the reference."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _flat_draw(draw):
  """Draws an initial kernel as a flat vector and reshapes it.

  Same distribution; XLA compiles a 1-D threefry draw about 10x faster than a
  4-D one, which is most of a model's init compile time on CPU.
  """
  def init(key, shape, dtype=jnp.float32):
    return draw(key, (math.prod(shape),), shape, dtype).reshape(shape)
  return init


def _glorot_uniform(key, flat_shape, shape, dtype):
  fan_in, fan_out = math.prod(shape[:-1]), shape[-1]
  limit = math.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(key, flat_shape, dtype, -limit, limit)


_dense_init = _flat_draw(_glorot_uniform)   # Glorot-uniform (the reference's dense default)
_conv_init = _flat_draw(lambda key, flat, shape, dtype: 0.02 * jax.random.normal(key, flat, dtype))


@dataclasses.dataclass(frozen=True)
class _Ctx:
  """What every layer of one forward pass needs to know."""
  train: bool
  axis_name: Optional[str]
  dtype: Any
  keys: Optional[jax.Array] = None  # (B, 2) per-example keys, training only


def _batch_norm(ctx: _Ctx, name=None) -> nn.BatchNorm:
  # flax: running = momentum * running + (1 - momentum) * batch, as SPEC §3.
  return nn.BatchNorm(use_running_average=not ctx.train, momentum=0.9, epsilon=1e-5,
                      scale_init=_bn_scale_init, axis_name=ctx.axis_name if ctx.train else None,
                      dtype=ctx.dtype, name=name)


def _dense(n, ctx, before_norm=False):
  if before_norm:
    return PreNorm("dense", n, ctx.dtype)
  return nn.Dense(n, kernel_init=_dense_init, dtype=ctx.dtype)


def _conv(n, ctx, before_norm=False):
  if before_norm:
    return PreNorm("conv", n, ctx.dtype)
  return nn.Conv(n, (4, 4), strides=(2, 2), padding="SAME", kernel_init=_conv_init, dtype=ctx.dtype)


def _conv_transpose(n, ctx, before_norm=False):
  if before_norm:
    return PreNorm("conv_transpose", n, ctx.dtype)
  return ConvTranspose(n, dtype=ctx.dtype)


# Sub-pixel form of a 4x4, stride-2, "SAME" transposed convolution (flax/lax layout):
# output row 2m is W[0] x[m-1] + W[2] x[m] and row 2m+1 is W[1] x[m] + W[3] x[m+1]
# (likewise for columns), so each of the four output phases is a 2x2 stride-1
# convolution of the input with kernel rows/columns a, a+2 (kernel[a::2]) over
# input rows m+a-1, m+a (phase 0 reaches back one pixel, phase 1 forward one).


class ConvTranspose(nn.Module):
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`, computed fast.

  Same parameters (kernel (4, 4, in, out), optional bias) and the same outputs
  (tested against flax), evaluated as four 2x2 stride-1 convolutions, one per
  output phase (each a matrix product over 4 shifted views), interleaved. XLA's generic form convolves a zero-dilated input:
  4x the multiply-adds, and on XLA:CPU its kernel gradient ran ~100x slower
  (9 s for one 8x64x64x64 -> 128x128x128 layer).
  """
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    c_in, c_out = h.shape[-1], self.features
    kernel = jnp.asarray(self.param("kernel", _conv_init, (4, 4, c_in, c_out), jnp.float32), self.dtype)
    # The 3x3 neighbourhood of every input pixel, as 9 shifted views (i, j = -1, 0, +1):
    # each phase is then one matrix product of 4 of them with its 2x2 taps, so the forward
    # pass and both gradients are plain dots (fast everywhere, XLA:CPU included).
    height, width = h.shape[1:3]
    padded = jnp.pad(h.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    view = lambda i, j: padded[:, 1 + i:1 + i + height, 1 + j:1 + j + width]
    rows = []
    for a in range(2):
      phases = []
      for b in range(2):
        shifts = [(a - 1 + i, b - 1 + j) for i in range(2) for j in range(2)]
        patches = jnp.concatenate([view(i, j) for i, j in shifts], axis=-1)   # (B, H, W, 4 in)
        taps = kernel[a::2, b::2]                   # (2, 2, in, out)
        phases.append(patches @ taps.reshape(4 * c_in, c_out))
      rows.append(jnp.stack(phases, axis=3))                    # (B, H, W, b, C)
    out = jnp.stack(rows, axis=2)                               # (B, H, a, W, b, C)
    batch, height, _, width = out.shape[:4]
    out = out.reshape(batch, 2 * height, 2 * width, c_out)
    if self.use_bias:
      out = out + self.param("bias", nn.initializers.zeros_init(), (c_out,), jnp.float32).astype(out.dtype)
    return out


class PreNorm(nn.Module):
  """A Dense/Conv/ConvTranspose whose output is batch-normalised next.

  Batch norm subtracts the batch mean, so this layer's bias has an exactly
  zero gradient; in float32 it gets round-off instead (~1e-9), which Adam's
  normalisation turns into steps of ±learning_rate, a random walk that makes
  runs depend on summation order (and so on the device count). We apply the
  exact zero (stop_gradient): the bias stays a parameter, as in the
  reference's parameter count, and stays at its initial value of zero.
  """
  kind: str
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    if self.kind == "dense":
      layer = nn.Dense(self.features, use_bias=False, kernel_init=_dense_init, dtype=self.dtype)
    elif self.kind == "conv":
      layer = nn.Conv(self.features, (4, 4), strides=(2, 2), padding="SAME", use_bias=False,
                      kernel_init=_conv_init, dtype=self.dtype)
    else:
      layer = ConvTranspose(self.features, use_bias=False, dtype=self.dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    out = layer(h)
    return out + jax.lax.stop_gradient(bias).astype(out.dtype)


def _split(h: jax.Array) -> Gaussian:
  """(mean | logvar) -> a float32 posterior; the logvar clip of SPEC §2 is exact under bfloat16 too."""
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
  """BatchNorm -> LeakyReLU -> layer: the "Block(n)" of SPEC §3."""
  features: int
  conv: bool = False

  @nn.compact
  def __call__(self, h, ctx: _Ctx):
    h = nn.leaky_relu(_batch_norm(ctx)(h), LEAK)
    return (_conv if self.conv else _dense)(self.features, ctx)(h)


# --------------------------------------------------------------------------
# Feature vectors (SPEC §3a)


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
  """q(z_s|x,y): Dense(4 nsef) on concat(h_x, h_y) -> Block(2 shdim) -> split."""
  width: int
  latent: int

  @nn.compact
  def __call__(self, h_x, h_y, ctx: _Ctx):
    h = _dense(4 * self.width, ctx, before_norm=True)(jnp.concatenate([h_x, h_y], axis=-1))
    return _split(Block(2 * self.latent)(h, ctx))


class FeatureDecoder(nn.Module):
  """p(x|z_x,z_s): concat -> Dense(ndf) -> BN -> ReLU -> Dense(d) [-> ReLU]."""
  width: int
  out_dim: int
  output_relu: bool = False

  @nn.compact
  def __call__(self, z_s, z_excl, ctx: _Ctx, salt: int = 0):
    h = _dense(self.width, ctx, before_norm=True)(jnp.concatenate([z_s, z_excl], axis=-1))
    out = _dense(self.out_dim, ctx)(nn.relu(_batch_norm(ctx)(h)))
    return nn.relu(out) if self.output_relu else out


# --------------------------------------------------------------------------
# Images (SPEC §3b, §3c)


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
  """q(z_x|x): conv stack to 2L x 2L -> BN -> LeakyReLU -> flatten -> Dense(2 exdim)."""
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
  """q(z_s|x,y), Cars: Dense(2 shdim) on concat(h_x, h_y) -> Block(2 shdim)."""
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

  Attributes mirror `config.model` (see `build_model`). `x_shape` / `y_shape`
  are the per-example input shapes: (d,) for features, (H, W, C) for images.
  """
  architecture: str
  x_shape: Tuple[int, ...]
  y_shape: Tuple[int, ...]
  neef: int
  nsef: int
  exdim: int
  ndf: int
  shdim: int = 0  # unused by "spatial", whose z_s has mults[-1] * nsef / 2 channels
  shared_posterior: str = "joint"
  prior_expert: bool = True
  num_classes: int = 0
  output_relu: bool = False
  latent_resolution: int = 8
  channel_cap: int = 8
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  def setup(self):
    a = self.architecture
    if a not in ARCHITECTURES:
      raise ValueError(f"model.architecture is {a!r}; expected one of {ARCHITECTURES}")
    if self.shared_posterior not in SHARED_POSTERIORS:
      raise ValueError(f"model.shared_posterior is {self.shared_posterior!r}; "
                       f"expected one of {SHARED_POSTERIORS}")
    if a == "features":
      self.exclusive_encoder_x = FeatureEncoder(self.neef, self.exdim)
      self.exclusive_encoder_y = FeatureEncoder(self.neef, self.exdim)
      self.shared_encoder_x = FeatureEncoder(self.nsef, self.shdim)
      self.shared_encoder_y = FeatureEncoder(self.nsef, self.shdim)
      if self.shared_posterior == "joint":
        self.joint_encoder = FeatureJoint(self.nsef, self.shdim)
      self.decoder_x = FeatureDecoder(self.ndf, self.x_shape[-1], self.output_relu)
      self.decoder_y = FeatureDecoder(self.ndf, self.y_shape[-1], self.output_relu)
    else:
      mults = stage_multipliers(self.x_shape[0], self.latent_resolution, self.channel_cap)
      stem = mults[:-1]  # the exclusive encoder stops one stage earlier (at 2L x 2L)
      self.exclusive_encoder_x = ImageExclusiveEncoder(self.neef, stem, self.exdim)
      self.exclusive_encoder_y = ImageExclusiveEncoder(self.neef, stem, self.exdim)
      if a == "spatial":
        self.shared_encoder_x = SpatialSharedEncoder(self.nsef, mults)
        self.shared_encoder_y = SpatialSharedEncoder(self.nsef, mults)
        if self.shared_posterior == "joint":
          self.joint_encoder = SpatialJoint(mults[-1] * self.nsef)
      else:
        self.shared_encoder_x = FlatSharedEncoder(self.nsef, mults, self.shdim)
        self.shared_encoder_y = FlatSharedEncoder(self.nsef, mults, self.shdim)
        if self.shared_posterior == "joint":
          self.joint_encoder = FlatJoint(self.shdim)
      up = tuple(reversed(stem))
      dec = lambda c: ImageDecoder(self.ndf, up, c, self.latent_resolution, flat=(a == "flat"),
                                   dropout_rate=self.dropout_rate)
      self.decoder_x = dec(self.x_shape[-1])
      self.decoder_y = dec(self.y_shape[-1])
    if self.num_classes:
      self.classifier = nn.Dense(self.num_classes, kernel_init=_dense_init, dtype=self.dtype)

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
    if self.shared_posterior == "joint":
      q_zs = self.joint_encoder(h_x, h_y, ctx)
    else:
      q_zs = D.product_of_experts([r_zs_x, r_zs_y], prior_expert=self.prior_expert)

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


def _getter(model_config):
  """`get(field, default)` for a ConfigDict, a dict or an object with attributes."""
  if hasattr(model_config, "get"):
    return model_config.get
  return lambda k, d=None: getattr(model_config, k, d)


def input_shapes(model_config) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
  """The per-example shapes of x and y that `model_config` describes."""
  get = _getter(model_config)
  if get("architecture") == "features":
    return (int(get("x_dim")),), (int(get("y_dim")),)
  r, c = int(get("resolution")), int(get("channels"))
  return (r, r, c), (r, r, c)


_CONFIG_FIELDS = ("neef", "nsef", "exdim", "shdim", "ndf", "shared_posterior", "prior_expert",
                  "num_classes", "output_relu", "latent_resolution", "channel_cap", "dropout_rate")


def build_model(model_config) -> IIAE:
  """Builds the IIAE module that `config.model` describes.

  Required fields: architecture ("features" | "spatial" | "flat"), neef, nsef,
  exdim, shdim, ndf; x_dim and y_dim for features; resolution and channels for
  images. Optional: shared_posterior ("joint" | "poe"), prior_expert,
  num_classes (0 = no classifier), output_relu, latent_resolution,
  channel_cap, dropout_rate, dtype ("float32" | "bfloat16": compute dtype;
  parameters stay float32).
  """
  get = _getter(model_config)
  arch = get("architecture")
  if arch not in ARCHITECTURES:
    raise ValueError(f"model.architecture is {arch!r}; expected one of {ARCHITECTURES}")
  sizes = ("neef", "nsef", "exdim", "ndf") + (("shdim",) if arch != "spatial" else ())
  for field in sizes:
    value = get(field)
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"model.{field} must be a positive integer, got {value!r}")
  x_shape, y_shape = input_shapes(model_config)
  if arch != "features":
    stage_multipliers(x_shape[0], get("latent_resolution", 8), get("channel_cap", 8))
  kwargs = {k: get(k) for k in _CONFIG_FIELDS if get(k) is not None}
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  dtype = get("dtype", "float32") or "float32"
  if dtype not in dtypes:
    raise ValueError(f"model.dtype must be one of {list(dtypes)}, got {dtype!r}")
  return IIAE(architecture=arch, x_shape=x_shape, y_shape=y_shape, dtype=dtypes[dtype], **kwargs)
