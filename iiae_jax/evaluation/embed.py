"""Embeddings of a whole split with the networks' means (docs/method.md §5a, §5b).

The core is pure: `paired_means` maps one batch (x, y) to the four posterior
means. `embed_paired` / `embed_zero_shot` run its jitted form over a split in
batches of one fixed size (the last batch padded by repeating its last index),
so each model compiles once per process whatever the split's size, and refuse
NaN or inf embeddings with an error that names the embedding.
"""
import functools
from typing import Callable, Dict, Optional

import jax
import numpy as np

from iiae_jax.data import PairedData, ZeroShotData
from iiae_jax.inference import exclusive_embedding, shared_embedding

# What each embedding is, in the paper's terms (used in error messages and reports).
PAIRED_EMBEDDINGS = {
    "z_s_x": "mean of r^x(z_s|x)",
    "z_s_y": "mean of r^y(z_s|y)",
    "z_x": "mean of q(z_x|x)",
    "z_y": "mean of q(z_y|y)",
}
ZERO_SHOT_EMBEDDINGS = {
    "sketch_z_s": "mean of r^x(z_s|x) of each sketch (query)",
    "photo_z_s": "mean of r^y(z_s|y) of each photo (gallery)",
}
DEFAULT_BATCH_SIZE = 128


def paired_means(model, variables, x, y) -> Dict[str, jax.Array]:
  """The four test-time posterior means of a batch of pairs."""
  return {
      "z_s_x": shared_embedding(model, variables, x, "x"),
      "z_s_y": shared_embedding(model, variables, y, "y"),
      "z_x": exclusive_embedding(model, variables, x, "x"),
      "z_y": exclusive_embedding(model, variables, y, "y"),
  }


# The model (a hashable linen module) and the domain are static: one compile per
# (model, batch shape), reused by every later call in the process.
_paired_means = jax.jit(paired_means, static_argnums=0)
_shared_means = jax.jit(shared_embedding, static_argnums=(0, 3))


def on_device(variables):
  """The evaluation variables (params, batch statistics) moved to the device once, not per batch."""
  return jax.device_put({k: v for k, v in variables.items() if k in ("params", "batch_stats")})


def subset(n: int, max_examples: int = 0, seed: int = 0) -> np.ndarray:
  """Sorted indices of a fixed random subset of size max_examples (all n when 0 or >= n)."""
  if not max_examples or max_examples >= n:
    return np.arange(n)
  if max_examples < 0:
    raise ValueError(f"max_examples must be >= 0, got {max_examples}")
  return np.sort(np.random.default_rng(seed).choice(n, int(max_examples), replace=False))


def run_batched(fn: Callable[..., Dict[str, jax.Array]], read: Callable[[np.ndarray], tuple],
                indices: np.ndarray, batch_size: int,
                check: Optional[Callable[[], None]] = None) -> Dict[str, np.ndarray]:
  """Concatenates fn(*read(batch indices)) over `indices` in batches of exactly batch_size.

  The last batch is padded by repeating its last index and the padding rows are
  dropped, so `fn` always sees one shape. Evaluation mode has no cross-example
  interaction (running batch statistics), so padding cannot change a result.
  `check()` runs before each batch (it raises to stop, e.g. on SIGTERM).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  indices = np.asarray(indices)
  if indices.size == 0:
    raise ValueError("nothing to embed: the split (or its subset) is empty")
  parts = []
  for start in range(0, indices.size, batch_size):
    if check is not None:
      check()
    chunk = indices[start:start + batch_size]
    valid = chunk.size
    if valid < batch_size:
      chunk = np.concatenate([chunk, np.full(batch_size - valid, chunk[-1])])
    out = fn(*read(chunk))
    parts.append({k: np.asarray(v)[:valid] for k, v in out.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def check_finite(embeddings: Dict[str, np.ndarray], where: str,
                 descriptions: Optional[Dict[str, str]] = None) -> None:
  """Raises ValueError naming the first embedding with a NaN or inf value."""
  descriptions = descriptions or {}
  for name, value in embeddings.items():
    bad = ~np.isfinite(value.reshape(value.shape[0], -1)).all(axis=1)
    if bad.any():
      rows = np.flatnonzero(bad)
      what = f" ({descriptions[name]})" if name in descriptions else ""
      raise ValueError(f"embedding {name}{what} of {where} is not finite: NaN or inf in "
                       f"{rows.size} of {value.shape[0]} examples (first: example {rows[0]}). "
                       "The model has diverged or its inputs hold NaN; no metric is computed.")


def embed_paired(model, variables, data: PairedData, *, indices=None,
                 batch_size: int = DEFAULT_BATCH_SIZE, check=None) -> Dict[str, np.ndarray]:
  """{"z_s_x", "z_s_y", "z_x", "z_y"}: means for data[indices] (default: every pair).

  Spatial z_s keep their shape (N, L, L, C); metrics flatten trailing axes.
  """
  if not isinstance(data, PairedData):
    raise TypeError(f"embed_paired needs PairedData, got {type(data).__name__}")
  indices = np.arange(len(data)) if indices is None else np.asarray(indices)
  variables = on_device(variables)
  read = lambda idx: (np.asarray(data.x[idx], np.float32), np.asarray(data.y[idx], np.float32))
  out = run_batched(functools.partial(_paired_means, model, variables), read, indices, batch_size, check)
  check_finite(out, f"{data.name}/{data.split}", PAIRED_EMBEDDINGS)
  return out


def embed_zero_shot(model, variables, data: ZeroShotData, *, sketch_indices=None, photo_indices=None,
                    batch_size: int = DEFAULT_BATCH_SIZE, check=None) -> Dict[str, np.ndarray]:
  """{"sketch_z_s", "photo_z_s"}: r^x means of the sketches and r^y means of the photos."""
  if not isinstance(data, ZeroShotData):
    raise TypeError(f"embed_zero_shot needs ZeroShotData, got {type(data).__name__}")
  variables = on_device(variables)
  out = {}
  for name, features, domain, idx in (("sketch_z_s", data.sketch, "x", sketch_indices),
                                      ("photo_z_s", data.photo, "y", photo_indices)):
    idx = np.arange(len(features)) if idx is None else np.asarray(idx)
    fn = lambda v, domain=domain, name=name: {name: _shared_means(model, variables, v, domain)}
    out.update(run_batched(fn, lambda i, f=features: (np.asarray(f[i], np.float32),), idx, batch_size,
                           check))
  check_finite(out, f"{data.name}/{data.split}", ZERO_SHOT_EMBEDDINGS)
  return out
