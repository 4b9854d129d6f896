"""Class-balanced sampling, deterministic paired batches and the paired flip."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from iiae_jax.data import (ClassIndex, class_balanced_batch, class_index, epoch_batch_indices,
                           random_flip, steps_per_epoch)
from tests.helpers import run_on_devices

# Classes of very different sizes, items shuffled so that class order != item order.
COUNTS = [1, 2, 5, 9, 17, 40]
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(len(COUNTS)), COUNTS))
PHOTO_LABELS = np.random.default_rng(1).permutation(np.repeat(np.arange(len(COUNTS)), COUNTS[::-1]))
STEPS = 20000


def test_class_index_groups_items_by_class():
  index = class_index(LABELS, len(COUNTS))
  assert isinstance(index, ClassIndex)
  np.testing.assert_array_equal(index.counts, COUNTS)
  np.testing.assert_array_equal(index.offsets, np.cumsum([0] + COUNTS[:-1]))
  order = np.asarray(index.order)
  assert sorted(order) == list(range(len(LABELS)))
  for c, (start, n) in enumerate(zip(index.offsets, index.counts)):
    assert (LABELS[order[start:start + n]] == c).all()


def test_class_index_names_an_empty_class():
  with pytest.raises(ValueError, match="'giraffe'"):
    class_index(np.array([0, 0, 2]), 3, class_names=["cat", "giraffe", "dog"])
  with pytest.raises(ValueError, match="index 1"):
    class_index(np.array([0, 0, 2]), 3)
  with pytest.raises(ValueError):
    class_index(np.array([0, 3]), 3)


@functools.cache
def _many_steps(sampler):
  """`sampler` jitted and vectorised over a leading axis of keys (compiled once per sampler)."""
  return jax.jit(jax.vmap(sampler, in_axes=(0, None, None)))


def _draw(sampler, sketch_labels=LABELS, photo_labels=PHOTO_LABELS, seed=0):
  keys = jax.random.split(jax.random.key(seed), STEPS)
  sketch_idx, photo_idx = _many_steps(sampler)(
      keys, class_index(sketch_labels, len(COUNTS)), class_index(photo_labels, len(COUNTS)))
  return np.asarray(sketch_idx), np.asarray(photo_idx)


@pytest.fixture(scope="module")
def uniform_draws():
  return _draw(class_balanced_batch)


def _uniformity_pvalues(idx, labels):
  """Chi-square p-value, per class of more than one item, of the draws being uniform in the class."""
  pvalues = []
  for c in range(len(COUNTS)):
    items = np.flatnonzero(labels == c)
    if len(items) < 2:
      continue
    drawn = np.searchsorted(items, idx[:, c])
    assert (items[drawn] == idx[:, c]).all()
    pvalues.append(stats.chisquare(np.bincount(drawn, minlength=len(items))).pvalue)
  return np.array(pvalues)


def test_every_batch_holds_one_sketch_and_one_photo_per_class(uniform_draws):
  sketch_idx, photo_idx = uniform_draws
  assert sketch_idx.shape == photo_idx.shape == (STEPS, len(COUNTS))
  assert sketch_idx.dtype == np.int32
  classes = np.broadcast_to(np.arange(len(COUNTS)), sketch_idx.shape)
  np.testing.assert_array_equal(LABELS[sketch_idx], classes)
  np.testing.assert_array_equal(PHOTO_LABELS[photo_idx], classes)


def test_each_item_is_drawn_uniformly_within_its_class(uniform_draws):
  sketch_idx, photo_idx = uniform_draws
  assert (_uniformity_pvalues(sketch_idx, LABELS) > 1e-3).all()
  assert (_uniformity_pvalues(photo_idx, PHOTO_LABELS) > 1e-3).all()


def _biased_sampler(key, sketch_index, photo_index):
  """Favours the first items of each class (u^2 instead of u)."""
  def one(k, index):
    u = jax.random.uniform(k, index.counts.shape) ** 2
    return index.order[index.offsets + (u * index.counts).astype(jnp.int32)]
  k1, k2 = jax.random.split(key)
  return one(k1, sketch_index), one(k2, photo_index)


def _never_last_sampler(key, sketch_index, photo_index):
  """An off-by-one sampler that never draws the last item of a class."""
  def one(k, index):
    within = jax.random.randint(k, index.counts.shape, 0, jnp.maximum(index.counts - 1, 1))
    return index.order[index.offsets + within]
  k1, k2 = jax.random.split(key)
  return one(k1, sketch_index), one(k2, photo_index)


@pytest.mark.parametrize("sampler", [_biased_sampler, _never_last_sampler])
def test_the_uniformity_check_rejects_biased_samplers(sampler):
  sketch_idx, _ = _draw(sampler)
  assert _uniformity_pvalues(sketch_idx, LABELS).min() < 1e-3


def test_sketch_and_photo_draws_are_independent():
  # Same labels for both domains: shared randomness would make the two equal.
  s, p = _draw(class_balanced_batch, LABELS, LABELS, seed=3)
  c = len(COUNTS) - 1  # 40 items: equal draws happen with probability 1/40
  same = np.mean(s[:, c] == p[:, c])
  assert abs(same - 1 / 40) < 5 * np.sqrt(1 / 40 * 39 / 40 / STEPS)


def test_same_key_same_batch_step_by_step_or_vectorised(uniform_draws):
  sketch_index = class_index(LABELS, len(COUNTS))
  photo_index = class_index(PHOTO_LABELS, len(COUNTS))
  keys = jax.random.split(jax.random.key(0), STEPS)
  step = jax.jit(class_balanced_batch)
  for k in (0, 1, STEPS - 1):
    sketch_idx, photo_idx = step(keys[k], sketch_index, photo_index)
    np.testing.assert_array_equal(sketch_idx, uniform_draws[0][k])
    np.testing.assert_array_equal(photo_idx, uniform_draws[1][k])
  assert not np.array_equal(uniform_draws[0][0], uniform_draws[0][1])


def test_epoch_batches_cover_each_item_once_and_drop_the_remainder():
  n, bs = 23, 5
  assert steps_per_epoch(n, bs) == 4
  for epoch in range(3):
    batches = [epoch_batch_indices(0, epoch * 4 + i, n, bs) for i in range(4)]
    assert all(b.shape == (bs,) for b in batches)
    items = np.concatenate(batches)
    assert len(set(items)) == 20 and items.min() >= 0 and items.max() < n
    np.testing.assert_array_equal(items, np.random.default_rng([0, epoch]).permutation(n)[:20])
  assert not np.array_equal(epoch_batch_indices(0, 0, n, bs), epoch_batch_indices(0, 4, n, bs))


def test_same_seed_same_batches_other_seed_other_batches():
  a = [epoch_batch_indices(3, s, 100, 8) for s in range(30)]
  b = [epoch_batch_indices(3, s, 100, 8) for s in range(30)]
  c = [epoch_batch_indices(4, s, 100, 8) for s in range(30)]
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))


def test_resumed_iteration_matches_uninterrupted():
  n, bs, total = 50, 8, 40  # 6 steps per epoch: resume mid-epoch and across epochs
  uninterrupted = [epoch_batch_indices(11, s, n, bs) for s in range(total)]
  for k in (1, 6, 17):
    epoch_batch_indices(99, 0, n, bs)  # unrelated calls in between change nothing
    resumed = [epoch_batch_indices(11, s, n, bs) for s in range(k, total)]
    np.testing.assert_array_equal(np.stack(resumed), np.stack(uninterrupted[k:]))


def test_returned_batch_can_be_modified_without_changing_later_batches():
  first = epoch_batch_indices(0, 0, 10, 5)
  expected = first.copy()
  first[:] = -1
  np.testing.assert_array_equal(epoch_batch_indices(0, 0, 10, 5), expected)


@pytest.mark.parametrize("n,bs,step", [(10, 11, 0), (10, 0, 0), (10, -2, 0), (10, 5, -1)])
def test_epoch_batch_indices_rejects_bad_arguments(n, bs, step):
  with pytest.raises(ValueError):
    epoch_batch_indices(0, step, n, bs)


def test_random_flip_flips_x_and_y_identically():
  b = 64
  x = jnp.arange(b * 4 * 5 * 3, dtype=jnp.float32).reshape(b, 4, 5, 3)
  y = -2.0 * jnp.arange(b * 4 * 6 * 1, dtype=jnp.float32).reshape(b, 4, 6, 1)
  fx, fy = jax.jit(random_flip)(jax.random.key(0), x, y)
  x_flipped = np.all(np.asarray(fx) == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
  x_kept = np.all(np.asarray(fx) == np.asarray(x), axis=(1, 2, 3))
  y_flipped = np.all(np.asarray(fy) == np.asarray(y)[:, :, ::-1], axis=(1, 2, 3))
  y_kept = np.all(np.asarray(fy) == np.asarray(y), axis=(1, 2, 3))
  assert (x_flipped ^ x_kept).all() and (y_flipped ^ y_kept).all()
  np.testing.assert_array_equal(x_flipped, y_flipped)
  assert 0.25 < x_flipped.mean() < 0.75
  fx2, _ = random_flip(jax.random.key(0), x, y)
  np.testing.assert_array_equal(fx, fx2)


_ZERO_SHOT_BATCHES = """
  import json, jax, numpy as np
  from iiae_jax import input_pipeline, parallel
  from tests.helpers import tiny_train_config
  train_input = input_pipeline.make_train_input(tiny_train_config("digits_zs"))  # 7 classes: batch 7
  resident = parallel.replicate(train_input.resident())
  make = jax.pmap(lambda r, k: train_input.make_batch(None, r, jax.random.wrap_key_data(k)),
                  axis_name=parallel.AXIS)
  out = {"devices": jax.device_count()}
  for step in (0, 5):
    key = jax.random.key_data(jax.random.fold_in(jax.random.key(3), step))
    x, y, labels = make(resident, parallel.replicate(key))
    out[step] = [np.asarray(a).reshape((-1,) + a.shape[2:]).tolist() for a in (x, y, labels)]
  print(json.dumps(out))
"""


@pytest.mark.slow
def test_zero_shot_batches_over_seven_devices_equal_one_device_and_hold_every_class_once():
  """Each of 7 devices takes its slice of the class-balanced global batch: together the one
  device's batch, with the sketch and the photo of class c at position c."""
  from iiae_jax.data import load
  one, seven = (run_on_devices(_ZERO_SHOT_BATCHES, devices=n) for n in (1, 7))
  assert (one["devices"], seven["devices"]) == (1, 7)
  train = load("digits_zs", "train")
  for step in ("0", "5"):
    assert seven[step] == one[step]
    x, y, labels = (np.asarray(a) for a in one[step])
    assert labels.tolist() == list(range(7))
    for c in range(7):                     # each row is a real sketch / photo of class c
      assert np.any(np.all(train.sketch[train.sketch_labels == c] == x[c], axis=1))
      assert np.any(np.all(train.photo[train.photo_labels == c] == y[c], axis=1))
  assert one["0"] != one["5"]
