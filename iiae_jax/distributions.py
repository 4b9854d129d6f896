"""Diagonal Gaussians given as (mean, logvar): the one place for their math.

Every function is pure and works on arrays of any shape; a leading axis is the
batch and all remaining axes are event dimensions (a spatial latent of shape
(B, H, W, C) is one event of H*W*C dimensions).
"""
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

# Variance is capped at 1e4 (docs/method.md §2): exp(9.21035) = 10000.0.
MAX_LOGVAR = 9.21035


class Gaussian(NamedTuple):
  """A diagonal Gaussian; being a NamedTuple it is a JAX pytree."""
  mean: jax.Array
  logvar: jax.Array


def clip_logvar(logvar: jax.Array, max_logvar: float = MAX_LOGVAR) -> jax.Array:
  """Clips log-variances from above, keeping variances at most exp(max_logvar)."""
  return jnp.minimum(logvar, max_logvar)


def sample(posterior: Gaussian, eps: jax.Array) -> jax.Array:
  """The reparameterised sample mean + sigma * eps, differentiable in the posterior."""
  return posterior.mean + jnp.exp(0.5 * posterior.logvar) * eps


def sample_normal(key: jax.Array, posterior: Gaussian) -> jax.Array:
  """Draws one reparameterised sample with standard normal noise from `key`."""
  eps = jax.random.normal(key, posterior.mean.shape, posterior.mean.dtype)
  return sample(posterior, eps)


def _sum_event(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1) if x.ndim > 1 else x


def kl_divergence(q: Gaussian, p: Gaussian) -> jax.Array:
  """KL[q || p] between diagonal Gaussians, summed over event dims: shape (B,).

  `p` may broadcast against `q` (a scalar mean and logvar of 0 is N(0, I)).
  """
  dm = q.mean - p.mean
  elementwise = 0.5 * (p.logvar - q.logvar + jnp.exp(q.logvar - p.logvar)
                       + dm * dm * jnp.exp(-p.logvar) - 1.0)
  elementwise = jnp.broadcast_to(elementwise, jnp.broadcast_shapes(q.mean.shape, q.logvar.shape))
  return _sum_event(elementwise)


def kl_standard_normal(q: Gaussian) -> jax.Array:
  """KL[q || N(0, I)], summed over event dims: shape (B,)."""
  return kl_divergence(q, Gaussian(0.0, 0.0))


def product_of_experts(experts: Sequence[Gaussian], prior_expert: bool = True) -> Gaussian:
  """The normalised product of Gaussian densities (precision-weighted experts).

  precision = sum_i 1/var_i; mean = sum_i (mean_i/var_i) / precision. With
  `prior_expert`, N(0, I) joins the product. Computed in log space (a
  log-sum-exp over the experts' log-precisions, and softmax weights for the
  mean), so it is exact and finite for log-variances far outside [-30, 30] and
  for any number of experts.
  """
  experts = list(experts)
  if prior_expert:
    zeros = jnp.zeros_like(experts[0].mean)
    experts.append(Gaussian(zeros, zeros))
  if not experts:
    raise ValueError("product_of_experts needs at least one expert")
  means = jnp.stack([jnp.broadcast_to(e.mean, experts[0].mean.shape) for e in experts])
  log_precisions = -jnp.stack([jnp.broadcast_to(e.logvar, experts[0].mean.shape) for e in experts])
  logvar = -jax.nn.logsumexp(log_precisions, axis=0)
  weights = jax.nn.softmax(log_precisions, axis=0)
  return Gaussian(jnp.sum(weights * means, axis=0), logvar)
