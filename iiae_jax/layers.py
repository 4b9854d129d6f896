"""The layers of the networks that are written for speed rather than taken from flax.

- `ConvTranspose`: the decoders' 4x4, stride-2 transposed convolution: the
  same parameters and outputs as
  `flax.linen.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`,
  computed as a matrix product and `col2im` (gradients included).
- `Conv`: the encoders' 4x4, stride-2 convolution, equal to flax's `nn.Conv`;
  images (few channels) convolve as `im2col` and one product.
- `PreNorm`: a Dense / Conv / ConvTranspose whose output is batch-normalised
  next; its bias is held at exactly zero (see its docstring).
- The initialisers of the reference: Glorot-uniform dense kernels,
  N(0, 0.02) convolution kernels, N(1, 0.02) batch-norm scales.

`iiae_jax.models` composes these into the IIAE networks (docs/method.md §3).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def bn_scale_init(key, shape, dtype=jnp.float32):
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


dense_init = _flat_draw(_glorot_uniform)   # Glorot-uniform (the reference's dense default)
conv_init = _flat_draw(lambda key, flat, shape, dtype: 0.02 * jax.random.normal(key, flat, dtype))


def conv(features: int, dtype=jnp.float32, use_bias: bool = True) -> "Conv":
  """The encoders' convolution: kernel 4, stride 2, 'SAME' padding."""
  return Conv(features, use_bias=use_bias, dtype=dtype)


def dense(features: int, dtype=jnp.float32, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=dense_init, dtype=dtype)


# A 4x4, stride-2, 'SAME' convolution reads, for output pixel (m, n), input pixels
# (2m + kh - 1, 2n + kw - 1), kh, kw = 0..3 (zero outside the image); flax's transposed
# convolution sends input pixel n through tap k to output row 2n + 2 - k, the same map
# with the taps flipped. So both are one matrix product and one fixed gather (im2col)
# or its transpose, the scatter-add (col2im); each is the other's gradient.


def im2col(x):
  """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 16, C): the 4x4 stride-2 patches, taps (kh, kw)."""
  batch, height, width, channels = x.shape
  out_h, out_w = -(-height // 2), -(-width // 2)
  padded = jnp.pad(x, ((0, 0), (1, 2 * out_h + 1 - height), (1, 2 * out_w + 1 - width), (0, 0)))
  # Row pairs: tap kh = 2i + p of patch m is row p of pair m + i (likewise columns); slicing
  # whole pairs is ~2x faster on XLA:CPU than 16 stride-2 slices.
  pairs = padded.reshape(batch, out_h + 1, 2, out_w + 1, 2, channels)
  views = jnp.stack([jnp.stack([pairs[:, i:i + out_h, :, j:j + out_w] for j in range(2)], axis=4)
                     for i in range(2)], axis=2)                     # (B, m, i, p, n, j, q, C)
  return views.transpose(0, 1, 4, 2, 3, 5, 6, 7).reshape(batch, out_h, out_w, 16, channels)


# Tap k of the patch at m reads row 2m + k - 1: row PARITY[k] of row pair m + PAIR_OFFSET[k].
_PARITY, _PAIR_OFFSET = (1, 0, 1, 0), (-1, 0, 0, 1)


def _shifted(t, offset, axis):
  """t'[m] = t[m + offset] along `axis`, zero where m + offset falls outside."""
  if offset == 0:
    return t
  size, start = t.shape[axis], max(offset, 0)
  padding = [(0, 0)] * t.ndim
  padding[axis] = (max(-offset, 0), start)
  return jax.lax.slice_in_dim(jnp.pad(t, padding), start, start + size, axis=axis)


def col2im(patches, height, width):
  """The transpose of `im2col`: adds each patch back onto a (B, height, width, C) image."""
  batch, out_h, out_w, _, channels = patches.shape
  taps = patches.reshape(batch, out_h, out_w, 4, 4, channels)
  # Row a of pair r sums the taps kh of parity a from patch r - PAIR_OFFSET[kh] (likewise columns);
  # shifting each tap on its own lets XLA fuse it all into one pass (a padded copy of all the taps
  # made it 3-15x slower).
  phase = lambda a, b: sum(_shifted(_shifted(taps[:, :, :, kh, kw], -_PAIR_OFFSET[kh], 1), -_PAIR_OFFSET[kw], 2)
                           for kh in range(4) if _PARITY[kh] == a for kw in range(4) if _PARITY[kw] == b)
  rows = [jnp.stack([phase(a, b) for b in range(2)], axis=3) for a in range(2)]
  image = jnp.stack(rows, axis=2).reshape(batch, 2 * out_h, 2 * out_w, channels)
  return image[:, :height, :width]


def _transposed_taps(kernel):
  """(4, 4, C, F) -> (C, 16 F): the flipped taps that send one input pixel to its 16 outputs."""
  c_in, c_out = kernel.shape[2:]
  return kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(c_in, 16 * c_out)


# The gradients by hand: autodiff of `col2im` builds its transpose from 16 zero-padded
# copies of the image (the digits_cdcb step ran 7x slower on XLA:CPU), and of the product
# it transposes the 16-tap operand, not x, for the kernel gradient (2x slower layers).
@jax.custom_vjp
def conv_transpose(x, kernel):
  """`nn.ConvTranspose(F, (4, 4), strides=(2, 2), padding="SAME")` of x with kernel (4, 4, C, F)."""
  batch, height, width, _ = x.shape
  per_tap = (x @ _transposed_taps(kernel)).reshape(batch, height, width, 16, kernel.shape[-1])
  return col2im(per_tap, 2 * height, 2 * width)


def _conv_transpose_backward(residuals, g):
  x, kernel = residuals
  batch, height, width, c_in = x.shape
  g_per_tap = im2col(g).reshape(batch * height * width, 16 * kernel.shape[-1])
  g_x = (g_per_tap @ _transposed_taps(kernel).T).reshape(x.shape)
  g_taps = x.reshape(-1, c_in).T @ g_per_tap
  g_kernel = g_taps.reshape(c_in, 4, 4, -1).transpose(1, 2, 0, 3)[::-1, ::-1]
  return g_x, g_kernel


conv_transpose.defvjp(lambda x, kernel: (conv_transpose(x, kernel), (x, kernel)), _conv_transpose_backward)


# Inputs with at most this many channels (the images) convolve as im2col and one product:
# XLA:CPU convolves 3 channels at ~20 GFLOP/s.
PRODUCT_CONV_MAX_CHANNELS = 4


@jax.custom_vjp
def conv_as_product(x, kernel):
  """`nn.Conv(F, (4, 4), strides=(2, 2), padding="SAME")` of x with kernel (4, 4, C, F), as im2col @ kernel."""
  return _conv_as_product_forward(x, kernel)[0]


def _conv_as_product_forward(x, kernel):
  patches = im2col(x)
  rows = patches.reshape(-1, patches.shape[3] * patches.shape[4])
  out = (rows @ kernel.reshape(-1, kernel.shape[-1])).reshape(patches.shape[:3] + kernel.shape[-1:])
  return out, (rows, kernel, x.shape)


def _conv_as_product_backward(residuals, g):
  rows, kernel, x_shape = residuals
  g_rows = g.reshape(-1, kernel.shape[-1])
  # (g^T patches)^T: the transpose falls on the small product, not on the patches.
  g_kernel = (g_rows.T @ rows).T.reshape(kernel.shape)
  g_patches = (g_rows @ kernel.reshape(-1, kernel.shape[-1]).T).reshape(g.shape[:3] + (16, x_shape[-1]))
  return col2im(g_patches, *x_shape[1:3]), g_kernel


conv_as_product.defvjp(_conv_as_product_forward, _conv_as_product_backward)


class _Strided4x4(nn.Module):
  """A 4x4, stride-2 layer: kernel (4, 4, in, features) drawn N(0, 0.02), optional bias;
  subclasses say how `apply_kernel` computes it."""
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  def apply_kernel(self, h, kernel):
    raise NotImplementedError

  @nn.compact
  def __call__(self, h):
    kernel = self.param("kernel", conv_init, (4, 4, h.shape[-1], self.features), jnp.float32)
    out = self.apply_kernel(h.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      out = out + self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32).astype(out.dtype)
    return out


class Conv(_Strided4x4):
  """`nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME")`: the same parameters and outputs.

  XLA's convolution, except for inputs of at most PRODUCT_CONV_MAX_CHANNELS
  channels (`conv_as_product`).
  """

  def apply_kernel(self, h, kernel):
    if h.shape[-1] <= PRODUCT_CONV_MAX_CHANNELS:
      return conv_as_product(h, kernel)
    return jax.lax.conv_general_dilated(h, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


class ConvTranspose(_Strided4x4):
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`, computed fast.

  Same parameters (kernel (4, 4, in, out), optional bias) and the same outputs
  (tested against flax), evaluated as one matrix product of every input pixel
  with all 16 taps, then `col2im`; both gradients are products with
  `im2col` of the output gradient. XLA's
  generic form convolves a zero-dilated input: 4x the multiply-adds, and on
  XLA:CPU its kernel gradient ran ~100x slower.
  """

  def apply_kernel(self, h, kernel):
    return conv_transpose(h, kernel)


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
      layer = dense(self.features, self.dtype, use_bias=False)
    elif self.kind == "conv":
      layer = conv(self.features, self.dtype, use_bias=False)
    else:
      layer = ConvTranspose(self.features, use_bias=False, dtype=self.dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    out = layer(h)
    return out + jax.lax.stop_gradient(bias).astype(out.dtype)

