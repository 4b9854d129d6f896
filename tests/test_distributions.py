"""Pins the Gaussian math of iiae_jax.distributions (docs/method.md §1-§2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from iiae_jax import distributions as D
from iiae_jax.distributions import Gaussian


def _normal_logpdf(z, mean, logvar):
  return -0.5 * (np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_closed_form_matches_monte_carlo(seed):
  rng = np.random.default_rng(seed)
  d = 3
  q = Gaussian(rng.normal(size=(1, d)), rng.uniform(-1.5, 1.0, size=(1, d)))
  p = Gaussian(rng.normal(size=(1, d)), rng.uniform(-1.0, 1.5, size=(1, d)))
  n = 100_000
  z = np.asarray(D.sample_normal(jax.random.key(seed), Gaussian(
      jnp.broadcast_to(jnp.asarray(q.mean, jnp.float32), (n, d)),
      jnp.broadcast_to(jnp.asarray(q.logvar, jnp.float32), (n, d)))), np.float64)
  for target, closed in ((p, D.kl_divergence(q, p)), (Gaussian(0.0, 0.0), D.kl_standard_normal(q))):
    log_ratio = (_normal_logpdf(z, q.mean, q.logvar) - _normal_logpdf(z, target.mean, target.logvar)).sum(-1)
    standard_error = log_ratio.std() / np.sqrt(n)
    assert abs(log_ratio.mean() - float(closed[0])) < 4 * standard_error


def test_kl_of_a_distribution_with_itself_is_zero():
  rng = np.random.default_rng(0)
  g = Gaussian(jnp.asarray(rng.normal(size=(5, 4, 4, 2))), jnp.asarray(rng.normal(size=(5, 4, 4, 2))))
  np.testing.assert_allclose(D.kl_divergence(g, g), np.zeros(5), atol=1e-6)
  assert D.kl_divergence(g, g).shape == (5,)  # summed over every event dimension


def test_kl_standard_normal_matches_formula():
  m = jnp.array([[0.5, -1.0]]); lv = jnp.array([[0.3, -0.7]])
  expected = 0.5 * np.sum(-1.0 - lv + m ** 2 + np.exp(lv))
  np.testing.assert_allclose(D.kl_standard_normal(Gaussian(m, lv)), [expected], rtol=1e-6)


def test_clip_logvar_caps_variance_at_1e4():
  lv = jnp.array([-50.0, 0.0, 9.0, 9.5, 1e4])
  np.testing.assert_allclose(D.clip_logvar(lv), [-50.0, 0.0, 9.0, 9.21035, 9.21035])
  assert np.exp(9.21035) == pytest.approx(1e4, rel=1e-5)


def test_reparameterised_sample_is_mean_plus_sigma_eps_and_differentiable():
  g = Gaussian(jnp.array([1.0]), jnp.array([np.log(4.0)]))
  assert float(D.sample(g, jnp.array([0.5]))[0]) == pytest.approx(2.0)
  grad = jax.grad(lambda m: D.sample(Gaussian(m, g.logvar), jnp.array([0.5]))[0])(g.mean)
  assert float(grad[0]) == pytest.approx(1.0)


def _grid_product(experts, prior_expert):
  grid = np.linspace(-12, 12, 400_001)
  log_density = sum(_normal_logpdf(grid, m, lv) for m, lv in experts)
  if prior_expert:
    log_density = log_density + _normal_logpdf(grid, 0.0, 0.0)
  w = np.exp(log_density - log_density.max())
  w /= w.sum()
  mean = (w * grid).sum()
  return mean, (w * (grid - mean) ** 2).sum()


@pytest.mark.parametrize("prior_expert", [True, False])
def test_poe_matches_normalised_product_of_densities_on_a_grid(prior_expert):
  experts = [(0.7, np.log(0.5)), (-1.2, np.log(2.0)), (2.0, np.log(1.5))]
  mean, var = _grid_product(experts, prior_expert)
  g = D.product_of_experts([Gaussian(jnp.array([m]), jnp.array([lv])) for m, lv in experts],
                           prior_expert=prior_expert)
  assert float(g.mean[0]) == pytest.approx(mean, abs=1e-5)
  assert float(jnp.exp(g.logvar[0])) == pytest.approx(var, rel=1e-4)


def test_poe_matches_closed_form():
  mx, lx, my, ly = 1.0, 0.5, -2.0, -1.0
  g = D.product_of_experts([Gaussian(jnp.array(mx), jnp.array(lx)), Gaussian(jnp.array(my), jnp.array(ly))])
  precision = 1 + np.exp(-lx) + np.exp(-ly)
  assert float(g.logvar) == pytest.approx(-np.log(precision), rel=1e-6)
  assert float(g.mean) == pytest.approx((mx * np.exp(-lx) + my * np.exp(-ly)) / precision, rel=1e-6)


def test_poe_is_finite_and_exact_for_extreme_logvars_and_many_experts():
  logvars = np.array([-30.0, -10.0, 0.0, 10.0, 30.0], np.float32)
  rng = np.random.default_rng(0)
  experts = [Gaussian(jnp.asarray(rng.normal(size=(64,)), jnp.float32),
                      jnp.asarray(rng.choice(logvars, size=(64,)), jnp.float32)) for _ in range(100)]
  g = D.product_of_experts(experts, prior_expert=True)
  assert np.all(np.isfinite(g.mean)) and np.all(np.isfinite(g.logvar))
  prec = 1.0 + sum(np.exp(-np.asarray(e.logvar, np.float64)) for e in experts)
  mean = sum(np.asarray(e.mean, np.float64) * np.exp(-np.asarray(e.logvar, np.float64)) for e in experts) / prec
  np.testing.assert_allclose(g.logvar, -np.log(prec), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g.mean, mean, rtol=1e-4, atol=1e-5)
  # One very confident expert dominates: the product sits on its mean.
  sharp = D.product_of_experts([Gaussian(jnp.array(3.0), jnp.array(-30.0)),
                                Gaussian(jnp.array(-5.0), jnp.array(30.0))])
  assert float(sharp.mean) == pytest.approx(3.0, abs=1e-6)
  assert float(sharp.logvar) == pytest.approx(-30.0, abs=1e-4)


# -- properties -------------------------------------------------------------

_floats = st.floats(-5, 5, allow_nan=False, width=32)
_logvars = st.floats(-8, 8, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_floats, _logvars, _floats, _logvars), min_size=1, max_size=6))
def test_kl_is_nonnegative_and_zero_only_for_equal_gaussians(params):
  a = np.array(params, np.float64)
  q = Gaussian(jnp.asarray(a[None, :, 0]), jnp.asarray(a[None, :, 1]))
  p = Gaussian(jnp.asarray(a[None, :, 2]), jnp.asarray(a[None, :, 3]))
  kl = float(D.kl_divergence(q, p)[0])
  assert kl >= -1e-5
  gap = np.abs(a[:, 0] - a[:, 2]).max() + np.abs(a[:, 1] - a[:, 3]).max()
  if gap > 1e-2:
    assert kl > 0
  assert abs(float(D.kl_divergence(q, q)[0])) < 1e-5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_floats, st.floats(-30, 30, allow_nan=False, width=32)), min_size=1, max_size=8),
       st.booleans(), st.randoms(use_true_random=False))
def test_poe_is_precision_additive_and_permutation_invariant(experts, prior_expert, rnd):
  gs = [Gaussian(jnp.float32(m), jnp.float32(lv)) for m, lv in experts]
  g = D.product_of_experts(gs, prior_expert=prior_expert)
  precision = sum(np.exp(-np.float64(lv)) for _, lv in experts) + (1.0 if prior_expert else 0.0)
  assert float(-g.logvar) == pytest.approx(np.log(precision), rel=1e-5, abs=1e-5)
  shuffled = list(gs)
  rnd.shuffle(shuffled)
  h = D.product_of_experts(shuffled, prior_expert=prior_expert)
  assert float(h.mean) == pytest.approx(float(g.mean), rel=1e-5, abs=1e-5)
  assert float(h.logvar) == pytest.approx(float(g.logvar), rel=1e-5, abs=1e-5)
