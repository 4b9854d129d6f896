"""The layers of the networks that are written for speed rather than taken from flax.

- `ConvTranspose`: the decoders' 4x4, stride-2 transposed convolution in its
  sub-pixel form: the same parameters and outputs as
  `flax.linen.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`,
  computed as matrix products.
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


def conv(features: int, dtype=jnp.float32, use_bias: bool = True) -> nn.Conv:
  """The encoders' convolution: kernel 4, stride 2, 'SAME' padding."""
  return nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME", use_bias=use_bias,
                 kernel_init=conv_init, dtype=dtype)


def dense(features: int, dtype=jnp.float32, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=dense_init, dtype=dtype)




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
    kernel = jnp.asarray(self.param("kernel", conv_init, (4, 4, c_in, c_out), jnp.float32), self.dtype)
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
      layer = dense(self.features, self.dtype, use_bias=False)
    elif self.kind == "conv":
      layer = conv(self.features, self.dtype, use_bias=False)
    else:
      layer = ConvTranspose(self.features, use_bias=False, dtype=self.dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    out = layer(h)
    return out + jax.lax.stop_gradient(bias).astype(out.dtype)

