"""Pins the layers written for speed (iiae_jax.layers): equal to flax's, gradients included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iiae_jax
from tests.helpers import tiny_model_config


def test_biases_feeding_a_batch_norm_get_exactly_zero_gradient():
  """Their true gradient is 0 (batch norm removes the mean); round-off must not move them."""
  model = iiae_jax.build_model(tiny_model_config("spatial"))
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x, x)
  grads = jax.jit(jax.grad(lambda p: iiae_jax.loss(model, {"params": p, "batch_stats": variables["batch_stats"]},
                                                   (x, x), jax.random.key(2))[0]))(variables["params"])
  pre_norm = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(grads)
              if "PreNorm" in jax.tree_util.keystr(k) and k[-1].key == "bias"}
  others = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(grads)
            if "PreNorm" not in jax.tree_util.keystr(k) and k[-1].key == "bias"}
  assert len(pre_norm) >= 6 and others
  assert all(float(jnp.abs(g).max()) == 0.0 for g in pre_norm.values())
  assert any(float(jnp.abs(g).max()) > 0.0 for g in others.values())


@pytest.mark.parametrize("shape,features,use_bias", [((2, 5, 7, 3), 4, True), ((1, 4, 4, 8), 2, False),
                                                     ((2, 4, 4, 24), 32, False), ((2, 8, 8, 16), 3, True),
                                                     ((3, 1, 2, 1), 5, True)])
def test_conv_transpose_equals_flax_conv_transpose_with_its_gradients(shape, features, use_bias):
  import flax.linen as nn
  from iiae_jax.layers import ConvTranspose
  _assert_equal_with_gradients(ConvTranspose(features, use_bias=use_bias),
                               nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", use_bias=use_bias),
                               shape, features, use_bias)


@pytest.mark.parametrize("shape,features,use_bias", [((2, 8, 8, 3), 4, True), ((2, 5, 7, 3), 3, False),
                                                     ((2, 6, 6, 8), 5, True), ((1, 3, 5, 6), 2, False)])
def test_conv_equals_flax_conv_with_its_gradients(shape, features, use_bias):
  """Both forms: the product (at most PRODUCT_CONV_MAX_CHANNELS input channels) and XLA's convolution."""
  import flax.linen as nn
  from iiae_jax.layers import Conv
  _assert_equal_with_gradients(Conv(features, use_bias=use_bias),
                               nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME", use_bias=use_bias),
                               shape, features, use_bias)


def _assert_equal_with_gradients(ours, reference, shape, features, use_bias):
  """Our layer and flax's, with the same (4, 4, in, out) kernel and a random bias: equal outputs
  and equal gradients with respect to the parameters and the input."""
  x = jax.random.normal(jax.random.key(0), shape)
  params = dict(ours.init(jax.random.key(1), x)["params"])
  if use_bias:
    params["bias"] = jax.random.normal(jax.random.key(2), (features,))
  assert params["kernel"].shape == (4, 4, shape[-1], features)
  loss = lambda module: lambda p, v: jnp.sum(jnp.sin(module.apply({"params": p}, v)))
  np.testing.assert_allclose(ours.apply({"params": params}, x), reference.apply({"params": params}, x),
                             atol=1e-5)
  g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  g_ref = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_image_model_parameters_have_the_paths_and_shapes_of_flax_layers(monkeypatch):
  """Checkpoints and the reference's variable mapping rely on the tree that nn.Conv / nn.ConvTranspose made."""
  import flax.linen as nn
  from iiae_jax import layers
  model = iiae_jax.build_model(tiny_model_config("spatial"))
  x = jnp.zeros((1, 16, 16, 3))
  shapes = lambda: jax.tree_util.tree_map_with_path(
      lambda path, leaf: (jax.tree_util.keystr(path), leaf.shape), jax.eval_shape(model.init, jax.random.key(0), x, x))
  ours = shapes()
  monkeypatch.setattr(layers, "conv", lambda features, dtype=jnp.float32, use_bias=True: nn.Conv(
      features, (4, 4), strides=(2, 2), padding="SAME", use_bias=use_bias, dtype=dtype))
  monkeypatch.setattr(layers, "ConvTranspose", lambda features, use_bias=True, dtype=jnp.float32: nn.ConvTranspose(
      features, (4, 4), strides=(2, 2), padding="SAME", use_bias=use_bias, dtype=dtype))
  assert ours == shapes()
  assert any("Conv_0" in path for path, _ in jax.tree.leaves(ours, is_leaf=lambda v: isinstance(v, tuple)))


def _patches_by_definition(x):
  """Output pixel (m, n) of a 4x4 stride-2 'SAME' convolution reads pixels (2m + kh - 1, 2n + kw - 1)."""
  height, width = x.shape[1:3]
  out_h, out_w = -(-height // 2), -(-width // 2)
  padded = jnp.pad(x, ((0, 0), (1, 3), (1, 3), (0, 0)))
  return jnp.stack([jnp.stack([padded[:, 2 * m:2 * m + 4, 2 * n:2 * n + 4].reshape(x.shape[0], 16, x.shape[3])
                               for n in range(out_w)], axis=1) for m in range(out_h)], axis=1)


@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (1, 5, 7, 2), (2, 1, 2, 4)])
def test_im2col_gathers_the_conv_patches_and_col2im_is_its_transpose_both_ways(shape):
  from iiae_jax.layers import col2im, im2col
  x = jax.random.normal(jax.random.key(0), shape)
  patches = im2col(x)
  np.testing.assert_array_equal(patches, _patches_by_definition(x))
  p = jax.random.normal(jax.random.key(1), patches.shape)
  (transpose,) = jax.linear_transpose(_patches_by_definition, x)(p)
  np.testing.assert_allclose(col2im(p, *shape[1:3]), transpose, atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda v: jnp.vdot(im2col(v), p))(x), transpose, atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda q: jnp.vdot(col2im(q, *shape[1:3]), x))(p), patches, atol=1e-6)
