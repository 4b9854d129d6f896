"""The IIAE objective of docs/method.md §2: `loss(model, variables, batch, rng, ...)`.

    L = (β + λ)(R_x + R_y)
      + c(t)(β + λ)(KL[q(z_x|x)‖N] + KL[q(z_y|y)‖N])
      + c(t) β KL[q(z_s|x,y)‖N]
      + λ (KL[q(z_s|x,y)‖r^x(z_s|x)] + KL[q(z_s|x,y)‖r^y(z_s|y)])
      + w_c CE(classifier(z_s), class)
"""
from typing import Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iiae_jax import distributions as D
from iiae_jax.config import LossConfig
from iiae_jax.errors import ConfigError

TERMS = ("recon_x", "recon_y", "kl_zx", "kl_zy", "kl_zs", "kl_zs_rx", "kl_zs_ry", "class", "c_t")

def kl_annealing(step, annealing_rate) -> jax.Array:
  """c(t) = 1 - exp(-t / ar); a constant for the gradient."""
  step = jnp.asarray(step, jnp.float32)
  return jax.lax.stop_gradient(1.0 - jnp.exp(-step / annealing_rate))


def reconstruction_error(recon: jax.Array, target: jax.Array, kind: str) -> jax.Array:
  """Mean absolute ("l1", images) or squared ("l2", features) error over every element."""
  diff = recon - target.astype(recon.dtype)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  if kind == "l2":
    return jnp.mean(diff * diff)
  raise ValueError(f"loss.recon must be 'l1' or 'l2', got {kind!r}")


def unpack_batch(batch, num_classes: Optional[int] = None
                 ) -> Tuple[jax.Array, jax.Array, Optional[jax.Array]]:
  """(x, y), (x, y, labels) or a mapping with keys x, y and optionally label.

  Concrete labels (not traced by `jit`) must be class indices in [0, num_classes)
  when `num_classes` (the classifier's, `model.num_classes`) is given and not 0:
  a ConfigError names the first value outside. Traced labels cannot be checked.
  """
  if isinstance(batch, Mapping):
    unknown = sorted(set(batch) - {"x", "y", "label"})
    if unknown or not {"x", "y"} <= set(batch):
      raise ValueError(f"a dict batch has keys 'x', 'y' and optionally 'label'; got {sorted(batch)}")
    x, y, labels = batch["x"], batch["y"], batch.get("label")
  elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
    x, y, labels = batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
  else:
    raise ValueError("batch must be (x, y), (x, y, labels) or a dict with keys 'x', 'y' "
                     f"[, 'label']; got {type(batch).__name__}")
  if labels is not None and jnp.shape(labels) != jnp.shape(x)[:1]:
    raise ValueError(f"labels must have shape (batch,) = {tuple(jnp.shape(x)[:1])}, one class index "
                     f"per pair; got {tuple(jnp.shape(labels))}")
  if labels is not None and num_classes and not isinstance(labels, jax.core.Tracer):
    values = np.asarray(labels)
    outside = np.flatnonzero((values < 0) | (values >= num_classes))
    if outside.size:
      first = int(outside[0])
      raise ConfigError(f"labels must be class indices in [0, {num_classes}) (model.num_classes = "
                        f"{num_classes}); got {values[first]} at batch position {first}")
  return x, y, labels


def loss_config(weights) -> LossConfig:
  """`weights` (config.loss: a ConfigDict, a dict or a LossConfig; None: the defaults) checked."""
  if weights is not None and not hasattr(weights, "keys") and not isinstance(weights, LossConfig):
    raise ConfigError(f"weights must be a mapping like config.loss, got {type(weights).__name__}")
  return LossConfig.from_mapping(weights)


def example_keys(rng: jax.Array, batch_size: int, axis_name: Optional[str] = None) -> jax.Array:
  """One key per example, folded from `rng` and the example's index in the global batch.

  Under `pmap`/`shard_map` with `axis_name`, shard i holds global examples
  i*B .. i*B+B-1, so every example gets the same noise however the batch is split.
  """
  offset = jax.lax.axis_index(axis_name) * batch_size if axis_name else 0
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch_size) + offset)


def loss_terms(outputs, x, y, labels, step, weights) -> Tuple[jax.Array, dict]:
  """Total and every term from the model's outputs (a pure function of arrays)."""
  w = loss_config(weights)
  c_t = kl_annealing(step, w.annealing_rate)
  mean = jnp.mean
  terms = {
      "recon_x": w.recon_weight * reconstruction_error(outputs["x_recon"], x, w.recon),
      "recon_y": w.recon_weight * reconstruction_error(outputs["y_recon"], y, w.recon),
      "kl_zx": mean(D.kl_standard_normal(outputs["q_zx"])),
      "kl_zy": mean(D.kl_standard_normal(outputs["q_zy"])),
      "kl_zs": mean(D.kl_standard_normal(outputs["q_zs"])),
      "kl_zs_rx": mean(D.kl_divergence(outputs["q_zs"], outputs["r_zs_x"])),
      "kl_zs_ry": mean(D.kl_divergence(outputs["q_zs"], outputs["r_zs_y"])),
      "class": jnp.zeros((), jnp.float32),
      "c_t": c_t,
  }
  if labels is not None and "logits" in outputs:
    terms["class"] = mean(optax.softmax_cross_entropy_with_integer_labels(
        outputs["logits"], labels.astype(jnp.int32)))
  elif labels is None and w.class_weight > 0:
    raise ValueError("loss.class_weight > 0 needs labels in the batch: pass (x, y, labels)")
  elif labels is not None and w.class_weight > 0 and "logits" not in outputs:
    raise ValueError("loss.class_weight > 0 needs a classifier: set model.num_classes > 0")
  beta, lam = w.beta, w.lam
  total = ((beta + lam) * (terms["recon_x"] + terms["recon_y"])
           + c_t * (beta + lam) * (terms["kl_zx"] + terms["kl_zy"])
           + c_t * beta * terms["kl_zs"]
           + lam * (terms["kl_zs_rx"] + terms["kl_zs_ry"])
           + w.class_weight * terms["class"])
  return total, terms


def loss(model, variables, batch, rng, *, step=0, weights=None, train: bool = True,
         axis_name: Optional[str] = None) -> Tuple[jax.Array, dict]:
  """The IIAE objective (to minimise) on one paired batch.

  Args:
    model: the module from `iiae_jax.build_model`.
    variables: {"params", "batch_stats"}.
    batch: (x, y), (x, y, labels) or {"x", "y"[, "label"]}; labels are class
      indices in [0, model.num_classes). Called outside `jit`, labels outside that
      range raise a ConfigError; inside `jit` they are traced and cannot be
      checked: an out-of-range label gives a wrong class term (NaN, or the
      class counted from the end for a negative one), so check them where
      they enter (the data loaders and the trainer's input do).
    rng: a PRNG key for the latent noise and dropout (unused when not training).
    step: the global step t of the KL annealing c(t).
    weights: `config.loss` (beta, lam, recon_weight, recon, annealing_rate,
      class_weight: `iiae_jax.config.LossConfig`); missing fields take its
      defaults, the Sketchy recipe of docs/method.md §4.
    train: sample latents, dropout, batch statistics (True); or means and
      running statistics (False).
    axis_name: under pmap/shard_map, the batch axis: batch-norm statistics are
      averaged across it and example noise is indexed by global position.

  Returns:
    (total, aux) with aux["terms"] every term of docs/method.md §2 (each already
    averaged over the local batch), aux["batch_stats"] the updated statistics
    (unchanged when not training) and aux["outputs"] the model's outputs.
  """
  x, y, labels = unpack_batch(batch, model.num_classes)
  if train:
    keys = example_keys(rng, x.shape[0], axis_name)
    outputs, updates = model.apply(variables, x, y, train=True, axis_name=axis_name,
                                   example_keys=keys, mutable=["batch_stats"])
    batch_stats = updates["batch_stats"]
  else:
    outputs = model.apply(variables, x, y, train=False)
    batch_stats = variables.get("batch_stats", {})
  total, terms = loss_terms(outputs, x, y, labels, step, weights)
  return total, {"terms": terms, "batch_stats": batch_stats, "outputs": outputs}
