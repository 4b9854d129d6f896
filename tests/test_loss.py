"""Pins `iiae_jax.loss` (docs/method.md §2): every term, its transformations and training progress."""
import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import iiae_jax
from iiae_jax import recipes
from iiae_jax.errors import ConfigError
from tests.helpers import run_on_devices, tiny_model_config

WEIGHTS = recipes.loss(beta=0.3, recon_weight=7.0, recon="l2", annealing_rate=50.0, lam=1.5,
                      class_weight=0.25)


def _setup(architecture="features", shared_posterior="joint", batch=6, num_classes=4, seed=0):
  model = iiae_jax.build_model(tiny_model_config(architecture, shared_posterior, num_classes))
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch,) + model.x_shape), jnp.float32)
  y = jnp.asarray(rng.normal(size=(batch,) + model.y_shape), jnp.float32)
  if architecture != "features":  # smooth images in [-1, 1], what a tanh decoder can fit
    x, y = jnp.tanh(_smooth(x)), jnp.tanh(_smooth(y))
  labels = jnp.asarray(rng.integers(0, max(num_classes, 1), size=batch))
  return model, jax.jit(model.init)(jax.random.key(seed), x, y), x, y, labels


def _smooth(images):
  kernel = jnp.ones((5, 5, 1, 1)) / 5.0
  c = images.shape[-1]
  return jax.lax.conv_general_dilated(images, jnp.tile(kernel, (1, 1, 1, c)), (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def _numpy_kl(mq, lq, mp, lp):
  mq, lq, mp, lp = (np.asarray(a, np.float64) for a in (mq, lq, mp, lp))
  kl = 0.5 * (lp - lq + (np.exp(lq) + (mq - mp) ** 2) / np.exp(lp) - 1.0)
  return kl.reshape(kl.shape[0], -1).sum(-1).mean()


@pytest.mark.parametrize("architecture,recon", [("features", "l2"), ("spatial", "l1"), ("flat", "l1")])
def test_terms_equal_an_independent_numpy_computation(architecture, recon):
  model, variables, x, y, labels = _setup(architecture)
  weights = WEIGHTS.copy_and_resolve_references()
  weights.recon = recon
  step = 37
  total, aux = jax.jit(lambda v: iiae_jax.loss(model, v, (x, y, labels), jax.random.key(1), step=step,
                                               weights=weights, train=True))(variables)
  o, t = aux["outputs"], aux["terms"]
  err = lambda a, b: np.abs(a - b) if recon == "l1" else (a - b) ** 2
  f64 = lambda a: np.asarray(a, np.float64)
  expected = {
      "recon_x": 7.0 * err(f64(o["x_recon"]), f64(x)).mean(),
      "recon_y": 7.0 * err(f64(o["y_recon"]), f64(y)).mean(),
      "kl_zx": _numpy_kl(o["q_zx"].mean, o["q_zx"].logvar, 0, 0),
      "kl_zy": _numpy_kl(o["q_zy"].mean, o["q_zy"].logvar, 0, 0),
      "kl_zs": _numpy_kl(o["q_zs"].mean, o["q_zs"].logvar, 0, 0),
      "kl_zs_rx": _numpy_kl(o["q_zs"].mean, o["q_zs"].logvar, o["r_zs_x"].mean, o["r_zs_x"].logvar),
      "kl_zs_ry": _numpy_kl(o["q_zs"].mean, o["q_zs"].logvar, o["r_zs_y"].mean, o["r_zs_y"].logvar),
      "c_t": 1.0 - np.exp(-step / 50.0),
  }
  logits = f64(o["logits"])
  log_softmax = logits - logits.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  expected["class"] = -log_softmax[np.arange(len(labels)), np.asarray(labels)].mean()
  assert set(t) == set(iiae_jax.TERMS)
  for name, value in expected.items():
    assert float(t[name]) == pytest.approx(value, rel=2e-5, abs=1e-6), name
  c, b, lam = expected["c_t"], 0.3, 1.5
  expected_total = ((b + lam) * (expected["recon_x"] + expected["recon_y"])
                    + c * (b + lam) * (expected["kl_zx"] + expected["kl_zy"])
                    + c * b * expected["kl_zs"] + lam * (expected["kl_zs_rx"] + expected["kl_zs_ry"])
                    + 0.25 * expected["class"])
  assert float(total) == pytest.approx(expected_total, rel=2e-5)
  # Reconstructions in training come from the *sampled* latents.
  dec = iiae_jax.decode(model, variables, o["z_s"], o["z_x"], "x")
  assert dec.shape == o["x_recon"].shape


def test_kl_annealing_is_a_constant_for_the_gradient_and_follows_the_step():
  assert float(iiae_jax.kl_annealing(0, 2000.0)) == 0.0
  assert float(iiae_jax.kl_annealing(2000, 2000.0)) == pytest.approx(1 - np.exp(-1), rel=1e-6)
  assert float(jax.grad(lambda s: iiae_jax.kl_annealing(s, 10.0))(3.0)) == 0.0


def test_evaluation_mode_uses_means_and_leaves_statistics_untouched():
  model, variables, x, y, labels = _setup()
  a, aux = iiae_jax.loss(model, variables, (x, y, labels), jax.random.key(1), step=5, weights=WEIGHTS, train=False)
  b, _ = iiae_jax.loss(model, variables, (x, y, labels), jax.random.key(2), step=5, weights=WEIGHTS, train=False)
  assert float(a) == float(b)
  np.testing.assert_array_equal(aux["outputs"]["z_s"], aux["outputs"]["q_zs"].mean)
  assert jax.tree.all(jax.tree.map(lambda p, q: bool(np.array_equal(p, q)), aux["batch_stats"], variables["batch_stats"]))


def test_class_term_requires_labels_when_weighted():
  model, variables, x, y, _ = _setup()
  with pytest.raises(ValueError, match="needs labels"):
    iiae_jax.loss(model, variables, (x, y), jax.random.key(1), weights=WEIGHTS)
  with pytest.raises(ValueError, match="loss.beta"):
    iiae_jax.loss(model, variables, (x, y), jax.random.key(1), weights=dict(beta=-1.0))


def test_misnamed_weights_batch_keys_and_labels_are_named():
  model, variables, x, y, labels = _setup()
  key = jax.random.key(1)
  with pytest.raises(ValueError, match=r"loss.recon_wieght is not a field of loss; its fields are \['annealing_rate', 'beta'"):
    iiae_jax.loss(model, variables, (x, y), key, weights=dict(recon_wieght=1e6))
  with pytest.raises(ValueError, match=r"keys 'x', 'y' and optionally 'label'; got \['Y', 'x'\]"):
    iiae_jax.loss(model, variables, {"x": x, "Y": y}, key, weights=WEIGHTS)
  with pytest.raises(ValueError, match=r"got \['labels', 'x', 'y'\]"):   # 'labels' would be ignored
    iiae_jax.loss(model, variables, {"x": x, "y": y, "labels": labels}, key, weights=WEIGHTS)
  with pytest.raises(ValueError, match=rf"labels must have shape \(batch,\) = \({x.shape[0]},\).*got \(3,\)"):
    iiae_jax.loss(model, variables, (x, y, labels[:3]), key, weights=WEIGHTS)


def test_labels_outside_the_classifier_are_refused_outside_jit_naming_value_and_class_count():
  model, variables, x, y, labels = _setup(num_classes=4)
  key = jax.random.key(1)
  for bad, position in ((4, 2), (-1, 5)):             # -1 would silently be the last class
    wrong = labels.at[position].set(bad)
    with pytest.raises(ConfigError) as err:
      iiae_jax.loss(model, variables, (x, y, wrong), key, weights=WEIGHTS)
    assert str(err.value) == (f"labels must be class indices in [0, 4) (model.num_classes = 4); "
                              f"got {bad} at batch position {position}")
  with pytest.raises(ValueError, match=r"got 9 at batch position 0"):
    iiae_jax.loss(model, variables, {"x": x, "y": y, "label": labels.at[0].set(9)}, key, weights=WEIGHTS)
  total, _ = iiae_jax.loss(model, variables, (x, y, labels), key, weights=WEIGHTS)   # in range: fine
  assert np.isfinite(float(total))
  # Inside jit the labels are traced: no check (documented), so the class term is wrong, not an error.
  traced = jax.jit(lambda v, l: iiae_jax.loss(model, v, (x, y, l), key, weights=WEIGHTS)[1]["terms"]["class"])
  assert np.isnan(float(traced(variables, labels.at[2].set(4))))


def test_loss_works_under_jit_grad_and_dict_batches():
  model, variables, x, y, labels = _setup()
  fn = jax.jit(jax.value_and_grad(
      lambda p: iiae_jax.loss(model, {"params": p, "batch_stats": variables["batch_stats"]},
                              {"x": x, "y": y, "label": labels}, jax.random.key(1), step=3,
                              weights=WEIGHTS), has_aux=True))
  (total, aux), grads = fn(variables["params"])
  eager, _ = iiae_jax.loss(model, variables, (x, y, labels), jax.random.key(1), step=3, weights=WEIGHTS)
  assert float(total) == pytest.approx(float(eager), rel=1e-5)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["joint_encoder"]))


def test_loss_vmaps_over_independent_models():
  model, _, x, y, labels = _setup()
  stacked = jax.jit(jax.vmap(lambda k: model.init(k, x, y)))(jax.random.split(jax.random.key(7), 3))
  loss = lambda v: iiae_jax.loss(model, v, (x, y, labels), jax.random.key(1), step=3, weights=WEIGHTS)[0]
  batched = jax.jit(jax.vmap(loss))(stacked)
  solo = jax.jit(loss)
  for i in range(3):
    assert float(batched[i]) == pytest.approx(float(solo(jax.tree.map(lambda a: a[i], stacked))), rel=1e-5)
  assert len(set(np.asarray(batched).round(4))) == 3   # the models really differ


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["features", "spatial", "flat"])
@pytest.mark.parametrize("shared_posterior", ["joint", "poe"])
def test_adam_steps_cut_the_loss_markedly(architecture, shared_posterior):
  model, variables, x, y, labels = _setup(architecture, shared_posterior, batch=8, num_classes=0)
  model = model.clone(config=dataclasses.replace(model.config, dropout_rate=0.0))  # a fixed batch to memorise: no dropout noise
  images = architecture != "features"
  weights = recipes.loss(beta=0.5, recon_weight=1000.0 if images else 10.0,
                        recon="l1" if images else "l2", annealing_rate=20.0)
  optimizer = optax.adam(5e-3, b1=0.5)

  def step(carry, t):
    params, stats, opt_state = carry
    (total, aux), grads = jax.value_and_grad(
        lambda p: iiae_jax.loss(model, {"params": p, "batch_stats": stats}, (x, y),
                                jax.random.fold_in(jax.random.key(0), t), step=t, weights=weights),
        has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(params, updates), aux["batch_stats"], opt_state), total

  init = (variables["params"], variables["batch_stats"], optimizer.init(variables["params"]))
  _, totals = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(300)))(init)
  start, end = float(totals[:10].mean()), float(totals[-10:].mean())
  assert end < 0.7 * start, (start, end)


@pytest.mark.slow
def test_pmapped_loss_with_batchnorm_sync_equals_the_single_device_loss():
  result = run_on_devices("""
    import json, jax, jax.numpy as jnp, numpy as np
    import iiae_jax
    from iiae_jax import recipes
    from tests.helpers import tiny_model_config
    assert jax.local_device_count() == 8
    model = iiae_jax.build_model(tiny_model_config("features", "joint", num_classes=3))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 12)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, 16))
    variables = model.init(jax.random.key(0), x, y)
    w = recipes.loss(beta=0.3, recon_weight=7.0, recon="l2", annealing_rate=50.0, class_weight=0.5)
    key = jax.random.key(42)
    def f(v, batch, axis_name=None):
      (total, aux), grads = jax.value_and_grad(
          lambda p: iiae_jax.loss(model, {"params": p, "batch_stats": v["batch_stats"]}, batch, key,
                                  step=11, weights=w, train=True, axis_name=axis_name), has_aux=True)(v["params"])
      return total, aux["terms"], aux["batch_stats"], grads
    single = jax.jit(f)(variables, (x, y, labels))
    def sharded(v, batch):
      total, terms, stats, grads = f(v, batch, "batch")
      return jax.lax.pmean((total, terms, stats, grads), "batch")
    shard = lambda a: a.reshape((8, 2) + a.shape[1:])
    replicated = jax.tree.map(lambda a: jnp.broadcast_to(a, (8,) + a.shape), variables)
    multi = jax.pmap(sharded, axis_name="batch")(replicated, (shard(x), shard(y), shard(labels)))
    multi = jax.tree.map(lambda a: a[0], multi)
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), single, multi)
    print(json.dumps({"max_diff": max(jax.tree.leaves(diffs)), "total": float(single[0]),
                      "class": float(single[1]["class"])}))
  """)
  assert result["class"] > 0
  assert result["max_diff"] < 1e-5, result
