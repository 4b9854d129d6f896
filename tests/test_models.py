"""Pins the docs/method.md §3 networks: sizes, shapes, modes and input checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iiae_jax
from configs import cars, mnist_cdcb, sketchy
from iiae_jax.models import stage_multipliers
from tests.helpers import tiny_model_config


def _param_count(model, x_shape, y_shape):
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(x_shape), jnp.zeros(y_shape))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))


def test_sketchy_model_has_the_reference_parameter_count():
  model = iiae_jax.build_model(sketchy.get_config().model)
  assert _param_count(model, (2, 512), (2, 512)) == 2_477_284


def test_spatial_256_model_parameter_count_follows_spec_3b():
  conv = lambda cin, cout: 16 * cin * cout + cout      # 4x4 kernel + bias
  bn = lambda c: 2 * c                                 # scale and bias
  # Shared encoder r: Conv(32) -> Block(64) -> Block(128) -> Block(256) -> Block(256).
  shared = (conv(3, 32) + conv(32, 64) + conv(64, 128) + conv(128, 256) + conv(256, 256)
            + bn(32) + bn(64) + bn(128) + bn(256))
  # Exclusive q: Conv(32) -> Block(64) -> Block(128) -> Block(256) -> BN -> flatten 16*16*256 -> Dense(16).
  exclusive = (conv(3, 32) + conv(32, 64) + conv(64, 128) + conv(128, 256)
               + bn(32) + bn(64) + bn(128) + bn(256) + (16 * 16 * 256 * 16 + 16))
  # Joint q(z_s|x,y): one Conv(256) over concat(h_x, h_y) of 512 channels.
  joint = conv(512, 256)
  # Decoder: z_s (128 ch) + tiled z_x (8) = 136 -> ConvT 512, 256, 128, 64 (each + BN) -> ConvT 3.
  decoder = (conv(136, 512) + bn(512) + conv(512, 256) + bn(256) + conv(256, 128) + bn(128)
             + conv(128, 64) + bn(64) + conv(64, 3))
  expected = 2 * shared + 2 * exclusive + joint + 2 * decoder
  assert expected == 16_801_830
  model = iiae_jax.build_model(mnist_cdcb.get_config().model)
  assert _param_count(model, (1, 256, 256, 3), (1, 256, 256, 3)) == expected


def test_stage_multipliers_reproduce_the_reference_layout_and_shrink_with_resolution():
  assert stage_multipliers(256, 8) == (1, 2, 4, 8, 8)
  assert stage_multipliers(64, 8) == (1, 2, 2)
  assert stage_multipliers(32, 4) == (1, 2, 2)
  with pytest.raises(ValueError, match="resolution 48"):
    stage_multipliers(48, 8)


@pytest.mark.parametrize("config_module,z_s_shape", [(mnist_cdcb, (1, 8, 8, 128)), (cars, (1, 128))])
def test_256_image_models_have_the_spec_latent_and_output_shapes(config_module, z_s_shape):
  model = iiae_jax.build_model(config_module.get_config().model)
  x = jnp.zeros((1, 256, 256, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x, x)
  out = jax.eval_shape(lambda v: model.apply(v, x, x), variables)
  assert out["z_s"].shape == z_s_shape
  assert out["z_x"].shape == (1, 8)
  assert out["x_recon"].shape == out["y_recon"].shape == (1, 256, 256, 3)


@pytest.mark.parametrize("architecture", ["features", "spatial", "flat"])
@pytest.mark.parametrize("shared_posterior", ["joint", "poe"])
def test_training_mode_samples_and_updates_statistics_evaluation_mode_is_deterministic(architecture, shared_posterior):
  config = tiny_model_config(architecture, shared_posterior, num_classes=5)
  model = iiae_jax.build_model(config)
  xs, ys = model.x_shape, model.y_shape
  x = jax.random.normal(jax.random.key(1), (6,) + xs)
  y = jax.random.normal(jax.random.key(2), (6,) + ys)
  variables = model.init(jax.random.key(0), x, y)
  assert set(variables) == {"params", "batch_stats"}
  assert ("joint_encoder" in variables["params"]) == (shared_posterior == "joint")
  ev1, ev2 = model.apply(variables, x, y), model.apply(variables, x, y)
  np.testing.assert_array_equal(ev1["z_s"], ev1["q_zs"].mean)  # means at evaluation
  np.testing.assert_array_equal(ev1["x_recon"], ev2["x_recon"])
  tr, updates = model.apply(variables, x, y, train=True, rngs={"sample": jax.random.key(3)},
                            mutable=["batch_stats"])
  assert not np.allclose(tr["z_s"], tr["q_zs"].mean)            # sampled in training
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), updates["batch_stats"], variables["batch_stats"])
  assert any(jax.tree.leaves(changed))
  assert tr["logits"].shape == (6, 5)
  for name in ("q_zx", "q_zy", "q_zs", "r_zs_x", "r_zs_y"):
    assert float(jnp.max(tr[name].logvar)) <= 9.21035


def test_product_of_experts_posterior_is_the_product_of_the_two_r_encoders():
  model = iiae_jax.build_model(tiny_model_config("features", "poe"))
  x, y = jnp.ones((4, 12)) * jnp.arange(4)[:, None], jnp.ones((4, 10)) * jnp.arange(4)[:, None]
  variables = model.init(jax.random.key(0), x, y)
  out = model.apply(variables, x, y)
  expected = iiae_jax.distributions.product_of_experts([out["r_zs_x"], out["r_zs_y"]], prior_expert=True)
  np.testing.assert_allclose(out["q_zs"].mean, expected.mean, rtol=1e-6)
  np.testing.assert_allclose(out["q_zs"].logvar, expected.logvar, rtol=1e-6)


def test_dropout_is_active_only_in_training():
  config = tiny_model_config("spatial")
  model = iiae_jax.build_model(config)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  variables = model.init(jax.random.key(0), x, x)
  out = lambda k: model.apply(variables, x, x, train=True, example_keys=jax.random.split(k, 4),
                              mutable=["batch_stats"])[0]
  # Same latent noise keys but different salts per layer: two calls with equal keys agree exactly,
  # so randomness is a pure function of the example keys.
  np.testing.assert_array_equal(out(jax.random.key(5))["x_recon"], out(jax.random.key(5))["x_recon"])
  config.dropout_rate = 0.0
  no_dropout = iiae_jax.build_model(config)
  a = model.apply(variables, x, x, train=True, example_keys=jax.random.split(jax.random.key(5), 4), mutable=["batch_stats"])[0]
  b = no_dropout.apply(variables, x, x, train=True, example_keys=jax.random.split(jax.random.key(5), 4), mutable=["batch_stats"])[0]
  assert not np.allclose(a["x_recon"], b["x_recon"])
  np.testing.assert_array_equal(a["z_s"], b["z_s"])


def test_mismatched_batch_sizes_raise_naming_both_shapes():
  model = iiae_jax.build_model(tiny_model_config("features"))
  with pytest.raises(ValueError, match=r"x has shape \(4, 12\), y has shape \(3, 10\)"):
    model.init(jax.random.key(0), jnp.zeros((4, 12)), jnp.zeros((3, 10)))


def test_integer_images_are_refused_naming_the_dtype():
  model = iiae_jax.build_model(tiny_model_config("spatial"))
  images = jnp.zeros((2, 16, 16, 3), jnp.uint8)                  # 0-255 bytes, not [-1, 1]
  with pytest.raises(ValueError, match=r"x has dtype uint8; the model takes floating-point inputs"):
    model.init(jax.random.key(0), images, images.astype(jnp.float32))


def test_wrong_feature_width_raises_naming_argument_received_and_expected():
  model = iiae_jax.build_model(tiny_model_config("features"))
  with pytest.raises(ValueError, match=r"y has shape \(4, 11\); the config expects \(batch, 10\) "
                                       r"\(wrong feature width: model.y_dim\)"):
    model.init(jax.random.key(0), jnp.zeros((4, 12)), jnp.zeros((4, 11)))


def test_wrong_image_size_raises_naming_argument_received_and_expected():
  model = iiae_jax.build_model(tiny_model_config("spatial"))
  with pytest.raises(ValueError, match=r"x has shape \(2, 32, 32, 3\); the config expects \(batch, 16, 16, 3\)"):
    model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), jnp.zeros((2, 16, 16, 3)))
  variables = model.init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)), jnp.zeros((2, 16, 16, 3)))
  with pytest.raises(ValueError, match=r"y has shape \(2, 16, 16, 1\).*model.resolution, model.channels"):
    iiae_jax.shared_embedding(model, variables, jnp.zeros((2, 16, 16, 1)), domain="y")
  with pytest.raises(ValueError, match=r"domain must be 'x' or 'y', got 'z'"):
    iiae_jax.shared_embedding(model, variables, jnp.zeros((2, 16, 16, 3)), domain="z")


def test_bad_config_values_raise_naming_the_field():
  config = tiny_model_config("features")
  config.shared_posterior = "mixture"
  with pytest.raises(ValueError, match="model.shared_posterior"):
    iiae_jax.build_model(config).init(jax.random.key(0), jnp.zeros((2, 12)), jnp.zeros((2, 10)))
  config = tiny_model_config("spatial")
  config.resolution = 24
  with pytest.raises(ValueError, match="model.resolution must be a power of two .*got 24"):
    iiae_jax.build_model(config)
  config = tiny_model_config("features")
  config.exclusive_width = 0
  with pytest.raises(ValueError, match="model.exclusive_width"):
    iiae_jax.build_model(config)
  config = tiny_model_config("features")
  config.dtype = "float16"
  with pytest.raises(ValueError, match=r"model.dtype must be one of \['float32', 'bfloat16'\], got 'float16'"):
    iiae_jax.build_model(config)


@pytest.mark.parametrize("old,new", [("neef", "exclusive_width"), ("nsef", "shared_width"),
                                     ("exdim", "exclusive_dim"), ("shdim", "shared_dim"),
                                     ("ndf", "decoder_width")])
def test_a_field_under_the_reference_flag_name_is_refused_naming_the_new_field(old, new):
  config = tiny_model_config("features").to_dict()
  config[old] = config.pop(new)
  with pytest.raises(ValueError, match=rf"model.{old} was renamed model.{new}: set model.{new} instead"):
    iiae_jax.build_model(config)


def test_build_model_takes_a_plain_dict():
  config = tiny_model_config("features")
  model = iiae_jax.build_model(config.to_dict())
  assert (model.x_shape, model.y_shape) == ((12,), (10,))
  assert iiae_jax.models.input_shapes(dict(tiny_model_config("spatial"))) == ((16, 16, 3), (16, 16, 3))


def test_inference_api_embeds_and_translates():
  model = iiae_jax.build_model(tiny_model_config("spatial"))
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  y = jax.random.normal(jax.random.key(2), (3, 16, 16, 3))
  variables = model.init(jax.random.key(0), x, y)
  out = model.apply(variables, x, y)
  np.testing.assert_allclose(iiae_jax.shared_embedding(model, variables, x, "x"), out["r_zs_x"].mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(iiae_jax.exclusive_embedding(model, variables, y, "y"), out["q_zy"].mean, rtol=1e-5, atol=1e-6)
  # Translation with the pair's own exclusive code is the Y decoder applied to (r^x mean, q_y mean).
  styled = iiae_jax.translate(model, variables, x, to="y", reference=y)
  expected = iiae_jax.decode(model, variables, out["r_zs_x"].mean, out["q_zy"].mean, "y")
  np.testing.assert_allclose(styled, expected, rtol=1e-5, atol=1e-6)
  a = iiae_jax.translate(model, variables, x, to="y", rng=jax.random.key(0))
  b = iiae_jax.translate(model, variables, x, to="y", rng=jax.random.key(1))
  assert a.shape == (3, 16, 16, 3) and not np.allclose(a, b)      # diversity from random codes
  one_ref = iiae_jax.translate(model, variables, y, to="x", reference=x[:1])
  assert one_ref.shape == (3, 16, 16, 3)
  with pytest.raises(ValueError, match="rng= .* or reference="):
    iiae_jax.translate(model, variables, x, to="y")
