"""Test-time use of a trained IIAE: embeddings and cross-domain translation (docs/method.md §5c)."""
from typing import Optional

import jax
import jax.numpy as jnp

from iiae_jax.models import IIAE


def _eval_variables(variables):
  return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def shared_embedding(model: IIAE, variables, v, domain: str = "x") -> jax.Array:
  """The mean of r^domain(z_s | v): the domain-invariant embedding used for retrieval."""
  return model.apply(_eval_variables(variables), v, domain, method=IIAE.encode_shared).mean


def exclusive_embedding(model: IIAE, variables, v, domain: str = "x") -> jax.Array:
  """The mean of q(z_domain | v): the domain-specific embedding."""
  return model.apply(_eval_variables(variables), v, domain, method=IIAE.encode_exclusive).mean


def decode(model: IIAE, variables, z_s, z_exclusive, domain: str) -> jax.Array:
  """p(domain | z_domain, z_s) in evaluation mode."""
  return model.apply(_eval_variables(variables), z_s, z_exclusive, domain, method=IIAE.decode)


def translate(model: IIAE, variables, v, to: str = "y", *, rng: Optional[jax.Array] = None,
              reference: Optional[jax.Array] = None) -> jax.Array:
  """Translates `v` from the other domain into domain `to`.

  z_s is the mean of r(z_s | v); the target's exclusive code is the mean of
  q(z_to | reference) when `reference` (a batch of the target domain, or one
  example broadcast to all) is given (style transfer), else drawn from N(0, I)
  with `rng` (diversity: call with several keys).
  """
  if to not in ("x", "y"):
    raise ValueError(f"to must be 'x' or 'y', got {to!r}")
  source = "x" if to == "y" else "y"
  z_s = shared_embedding(model, variables, v, source)
  batch = v.shape[0]
  if reference is not None:
    z_excl = exclusive_embedding(model, variables, reference, to)
    if z_excl.shape[0] not in (1, batch):
      raise ValueError(f"reference has {z_excl.shape[0]} examples; expected 1 or {batch}")
    z_excl = jnp.broadcast_to(z_excl, (batch,) + z_excl.shape[1:])
  elif rng is not None:
    z_excl = jax.random.normal(rng, (batch, model.exclusive_dim), jnp.float32)
  else:
    raise ValueError("translate needs rng= (random exclusive codes) or reference= (style transfer)")
  return decode(model, variables, z_s, z_excl, to)
