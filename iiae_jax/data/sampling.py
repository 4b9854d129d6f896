"""Batch sampling: class-balanced (zero-shot) on the accelerator, and deterministic paired epochs.

Class-balanced batches (docs/method.md §4, Sketchy): each step holds, for every training
class, one random sketch and one random photo of that class. The features stay
on the device; the trainer draws indices with `class_balanced_batch` inside its
jitted step and gathers `features[idx]` there.

Paired batches: `epoch_batch_indices` is a pure function of (seed, step), so
the whole iteration state is the step and a resumed run sees exactly the
batches an uninterrupted one would.
"""
import functools
from typing import NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np


class ClassIndex(NamedTuple):
  """Items grouped by class: `order[offsets[c] : offsets[c] + counts[c]]` are class c's items."""
  order: jax.Array    # (N,) int32 item indices sorted by class (stable)
  offsets: jax.Array  # (C,) int32 start of each class in `order`
  counts: jax.Array   # (C,) int32 number of items of each class


def class_index(labels, num_classes: int, class_names: Optional[Sequence[str]] = None) -> ClassIndex:
  """Groups item indices by integer label in [0, num_classes).

  Raises ValueError naming the class (by `class_names` if given) when a class
  has no item, or when a label is out of range.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
  counts = np.bincount(labels, minlength=num_classes)
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    names = [class_names[c] if class_names is not None else str(c) for c in empty]
    raise ValueError(f"class {names[0]!r} (index {empty[0]}) has no item; "
                     f"every class needs one to sample balanced batches (empty: {names[:10]})")
  offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
  order = np.argsort(labels, kind="stable")
  return ClassIndex(jnp.asarray(order, jnp.int32), jnp.asarray(offsets, jnp.int32),
                    jnp.asarray(counts, jnp.int32))


def _one_per_class(key: jax.Array, index: ClassIndex) -> jax.Array:
  within = jax.random.randint(key, index.counts.shape, 0, index.counts)
  return index.order[index.offsets + within]


def class_balanced_batch(key: jax.Array, sketch_index: ClassIndex,
                         photo_index: ClassIndex) -> Tuple[jax.Array, jax.Array]:
  """One uniformly random sketch and, independently, one photo of every class.

  Returns (sketch_idx, photo_idx), each (C,) int32 in class order: entry c
  indexes an item of class c. Pure and jittable.
  """
  sketch_key, photo_key = jax.random.split(key)
  return _one_per_class(sketch_key, sketch_index), _one_per_class(photo_key, photo_index)


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Full batches in one epoch of `n` items (the remainder is dropped)."""
  if batch_size <= 0 or batch_size > n:
    raise ValueError(f"batch_size must be in [1, n={n}], got {batch_size}")
  return n // batch_size


def epoch_batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
  """Indices of the batch at global `step`: a pure function of (seed, step).

  Epoch e = step // (n // batch_size) visits the items in the order of the
  permutation `np.random.default_rng([seed, e]).permutation(n)`, in full
  batches; the last n % batch_size items of each epoch are dropped.
  """
  per_epoch = steps_per_epoch(n, batch_size)
  if step < 0:
    raise ValueError(f"step must be non-negative, got {step}")
  epoch, within = divmod(int(step), per_epoch)
  return _epoch_order(int(seed), epoch, int(n))[within * batch_size:(within + 1) * batch_size].copy()


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  # Cached: consecutive steps of one epoch share the permutation.
  order = np.random.default_rng([seed, epoch]).permutation(n)
  order.flags.writeable = False
  return order


def random_flip(key: jax.Array, x: jax.Array, y: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Flips each pair (x_i, y_i) left-right together, with probability 1/2.

  x and y are (B, H, W, C) image batches (the width axis is flipped). `key` is
  one key for the batch, or one key per example (shape (B,)), which makes the
  flips independent of how a batch is split across devices.
  """
  if x.ndim != 4 or y.ndim != 4 or x.shape[0] != y.shape[0]:
    raise ValueError(f"random_flip expects two (B, H, W, C) batches, got {x.shape} and {y.shape}")
  if _is_key_batch(key):
    flip = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(key)
  else:
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
  flip = flip[:, None, None, None]
  return jnp.where(flip, x[:, :, ::-1], x), jnp.where(flip, y[:, :, ::-1], y)


def _is_key_batch(key) -> bool:
  # Typed keys: one key has shape (); old-style uint32 keys: one key is (2,).
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jnp.ndim(key) == 1
  return jnp.ndim(key) == 2
