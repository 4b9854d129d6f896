"""The offline datasets built from scikit-learn's digits."""
import itertools
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from iiae_jax.data import offline
from iiae_jax.data.offline import PALETTE, PALETTE_NAMES, colorize_pair, digits_cdcb, digits_zs

SKLEARN = load_digits()


def test_generation_is_fast():
  offline.clear_cache()
  start = time.process_time()   # this process's CPU time: a busy machine does not count
  train = digits_cdcb("train")
  train.batch(np.arange(64))
  digits_cdcb("test")
  digits_zs("train")
  digits_zs("test")
  assert time.process_time() - start < 5.0


def test_palette_is_fixed_distinct_and_in_range():
  assert PALETTE.dtype == np.float32 and PALETTE.shape[1] == 3
  assert 8 <= len(PALETTE) <= 12 and len(PALETTE_NAMES) == len(PALETTE)
  assert PALETTE.min() >= 0 and PALETTE.max() <= 1
  distances = [np.abs(a - b).max() for a, b in itertools.combinations(PALETTE, 2)]
  assert min(distances) > 0.1
  # Neither black (invisible stroke on black) nor white (invisible digit on it).
  assert (PALETTE.max(axis=1) > 0.3).all() and (PALETTE.min(axis=1) < 0.7).all()


def test_colorize_pair_strokes_on_black_and_white_on_background():
  gray = np.zeros((2, 4, 4), np.float32)
  gray[:, 1, 1] = 1.0
  gray[:, 2, 2] = 0.5
  x, y = colorize_pair(gray, PALETTE[[0, 1]], PALETTE[[2, 3]])
  assert x.shape == y.shape == (2, 4, 4, 3) and x.dtype == y.dtype == np.float32
  np.testing.assert_array_equal(x[:, 0, 0], -1.0)
  np.testing.assert_allclose(x[:, 1, 1], 2 * PALETTE[[0, 1]] - 1, atol=1e-6)
  np.testing.assert_allclose(x[:, 2, 2], PALETTE[[0, 1]] - 1, atol=1e-6)
  np.testing.assert_allclose(y[:, 0, 0], 2 * PALETTE[[2, 3]] - 1, atol=1e-6)
  np.testing.assert_allclose(y[:, 1, 1], 1.0, atol=1e-6)
  np.testing.assert_allclose(y[:, 2, 2], PALETTE[[2, 3]], atol=1e-6)


@pytest.mark.parametrize("split,size", [("train", 3 * 1258), ("valid", 180), ("test", 359)])
def test_cdcb_shapes_dtypes_ranges_and_factors(split, size):
  data = digits_cdcb(split, copies=3)
  assert data.name == "digits_cdcb" and data.split == split
  assert len(data) == size and data.x.shape == data.y.shape == (size, 32, 32, 3)
  assert data.x.dtype == data.y.dtype == np.float32
  batch = data.batch(np.arange(0, size, 7))
  for k in ("x", "y"):
    assert batch[k].dtype == np.float32 and batch[k].shape[1:] == (32, 32, 3)
    assert batch[k].min() >= -1.0 and batch[k].max() <= 1.0
    assert batch[k].min() == -1.0 or k == "y"
  assert set(data.factors) >= {"digit", "x_color", "y_color"}
  assert data.factor_names["digit"] == [f"digit_{d}" for d in range(10)]
  assert data.factor_names["x_color"] == data.factor_names["y_color"] == PALETTE_NAMES
  for values in data.factors.values():
    assert values.shape == (size,) and np.issubdtype(values.dtype, np.integer)
  assert set(np.unique(data.factors["x_color"])) == set(range(len(PALETTE)))
  # The digit factor is the sklearn label of the source image.
  np.testing.assert_array_equal(data.factors["digit"], SKLEARN.target[data.factors["image"]])


def test_cdcb_colours_match_factors_and_share_the_handwriting():
  data = digits_cdcb("valid")
  b = data.batch(np.arange(len(data)))
  x01, y01 = (b["x"] + 1) / 2, (b["y"] + 1) / 2
  cx, cy = PALETTE[b["x_color"]], PALETTE[b["y_color"]]
  background = np.all(b["x"] == -1.0, axis=-1)
  assert background.mean() > 0.3 and (~background).mean() > 0.1
  # The margin is background in both domains: X black, Y the y_color in [-1, 1].
  np.testing.assert_array_equal(b["x"][:, 0, 0], -1.0)
  np.testing.assert_allclose(b["y"][:, 0, 0], 2 * cy - 1, atol=1e-6)
  expected_y = np.broadcast_to((2 * cy - 1)[:, None, None, :], b["y"].shape)
  np.testing.assert_allclose(b["y"][background], expected_y[background], atol=1e-6)
  # Ink recovered from X (via its brightest channel) equals ink recovered from Y.
  rows = np.arange(len(b["x"]))
  kx, ky = cx.argmax(axis=1), cy.argmin(axis=1)
  ink_x = x01[rows, :, :, kx] / cx[rows, kx][:, None, None]
  ink_y = (y01[rows, :, :, ky] - cy[rows, ky][:, None, None]) / (1 - cy[rows, ky])[:, None, None]
  np.testing.assert_allclose(ink_x, ink_y, atol=2e-5)
  # X is the x_color scaled by the ink, in every channel.
  np.testing.assert_allclose(x01, ink_x[..., None] * cx[:, None, None, :], atol=2e-5)
  assert ink_x.max() > 0.9


def test_cdcb_image_follows_the_sklearn_digit():
  data = digits_cdcb("test", resolution=16)
  x = np.asarray(data.x[:20])
  ink = (x + 1).max(axis=-1) / 2 / PALETTE[data.factors["x_color"][:20]].max(axis=1)[:, None, None]
  # Averaging 16x16 ink over 2x2 blocks gives back the 8x8 digit inside the 10x10 canvas.
  canvas = ink.reshape(20, 8, 2, 8, 2).mean(axis=(2, 4))  # 8x8 over the padded 10x10 frame
  raw = np.pad(SKLEARN.images[data.factors["image"][:20]] / 16, ((0, 0), (1, 1), (1, 1)))
  raw = raw.reshape(20, 10, 1, 10, 1).repeat(4, axis=2).repeat(4, axis=4).reshape(20, 40, 40)
  raw = raw.reshape(20, 8, 5, 8, 5).mean(axis=(2, 4))
  corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(canvas, raw)]
  assert min(corr) > 0.9


def test_cdcb_splits_hold_disjoint_images_fixed_across_seeds():
  images = {s: set(digits_cdcb(s).factors["image"]) for s in ("train", "valid", "test")}
  for a, b in itertools.combinations(images.values(), 2):
    assert not a & b
  assert len(set().union(*images.values())) == 1797
  assert [len(images[s]) for s in ("train", "valid", "test")] == [1258, 180, 359]
  for s in images:
    assert set(digits_cdcb(s, seed=5).factors["image"]) == images[s]


def test_cdcb_train_copies_colour_each_image_several_times():
  data = digits_cdcb("train", copies=4)
  ids, counts = np.unique(data.factors["image"], return_counts=True)
  assert len(ids) == 1258 and (counts == 4).all()
  pairs = set(zip(data.factors["image"], data.factors["x_color"], data.factors["y_color"]))
  assert len(pairs) > 0.8 * len(data)  # the copies are mostly coloured differently
  assert len(digits_cdcb("test", copies=4)) == 359


def test_cdcb_same_seed_identical_other_seed_other_colours():
  a, b, c = digits_cdcb("train", seed=1), digits_cdcb("train", seed=1), digits_cdcb("train", seed=2)
  idx = np.arange(0, len(a), 97)
  for k in ("x", "y", "x_color", "y_color", "digit", "image"):
    np.testing.assert_array_equal(a.batch(idx)[k], b.batch(idx)[k])
  assert (a.factors["x_color"] != c.factors["x_color"]).mean() > 0.8
  assert (a.factors["y_color"] != c.factors["y_color"]).mean() > 0.8
  assert not np.array_equal(a.batch(idx)["x"], c.batch(idx)["x"])


def test_cdcb_lazy_images_index_like_arrays():
  data = digits_cdcb("test", resolution=24)
  full = np.asarray(data.x)
  assert full.shape == (359, 24, 24, 3) and full.dtype == np.float32
  np.testing.assert_array_equal(data.x[5], full[5])
  np.testing.assert_array_equal(data.x[-1], full[-1])
  np.testing.assert_array_equal(data.x[3:9], full[3:9])
  np.testing.assert_array_equal(data.x[np.array([[4, 2], [0, 7]])], full[np.array([[4, 2], [0, 7]])])
  np.testing.assert_array_equal(data.x[2, :, ::-1], full[2, :, ::-1])
  with pytest.raises(IndexError):
    data.x[359]


@pytest.mark.parametrize("kwargs", [{"split": "val"}, {"split": "train", "seed": -1},
                                    {"split": "train", "resolution": 4},
                                    {"split": "train", "copies": 0}])
def test_cdcb_rejects_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    digits_cdcb(**kwargs)


def test_zs_seen_and_unseen_classes_are_disjoint_7_and_3():
  train, test = digits_zs("train"), digits_zs("test")
  assert train.num_classes == 7 and test.num_classes == 3
  assert not set(train.classes) & set(test.classes)
  assert sorted(train.classes + test.classes) == sorted(f"digit_{d}" for d in range(10))
  assert test.classes == [f"digit_{d}" for d in offline.UNSEEN_DIGITS]


@pytest.mark.parametrize("split", ["train", "test"])
def test_zs_features_shapes_labels_and_paths(split):
  data = digits_zs(split)
  assert data.sketch.dtype == data.photo.dtype == np.float32
  assert data.sketch.shape[1] == 256 and data.photo.shape[1] == 432
  assert data.sketch_labels.dtype == data.photo_labels.dtype == np.int32
  assert len(data.sketch_labels) == len(data.sketch) and len(data.photo_labels) == len(data.photo)
  for feats in (data.sketch, data.photo):
    assert np.isfinite(feats).all() and feats.min() >= 0 and feats.max() <= 1
  for labels in (data.sketch_labels, data.photo_labels):
    assert set(labels) == set(range(data.num_classes))  # every class in both domains
  for paths, labels in ((data.sketch_paths, data.sketch_labels), (data.photo_paths, data.photo_labels)):
    assert [p.split("/")[-2] for p in paths] == [data.classes[l] for l in labels]
    ids = np.array([int(p.split("_")[-1]) for p in paths])
    np.testing.assert_array_equal(SKLEARN.target[ids], [int(data.classes[l][-1]) for l in labels])
  # Sketches are thin outlines: a minority of the pixels, yet every sketch has some.
  ink = (data.sketch > 0).mean(axis=1)
  assert ink.min() > 0.03 and ink.mean() < 0.45


def test_zs_sketches_and_photos_of_a_class_come_from_different_images():
  for split in ("train", "test"):
    data = digits_zs(split)
    sketch_ids = {int(p.split("_")[-1]) for p in data.sketch_paths}
    photo_ids = {int(p.split("_")[-1]) for p in data.photo_paths}
    assert not sketch_ids & photo_ids
    assert len(sketch_ids) == len(data.sketch) and len(photo_ids) == len(data.photo)
    for c in range(data.num_classes):  # a roughly even split inside each class
      ns, np_ = (data.sketch_labels == c).sum(), (data.photo_labels == c).sum()
      assert abs(ns - np_) <= 1


def test_zs_same_seed_identical_other_seed_other_photos():
  a, b, c = digits_zs("train", seed=3), digits_zs("train", seed=3), digits_zs("train", seed=4)
  np.testing.assert_array_equal(a.sketch, b.sketch)
  np.testing.assert_array_equal(a.photo, b.photo)
  np.testing.assert_array_equal(a.sketch, c.sketch)  # sketches do not depend on the seed
  assert not np.allclose(a.photo, c.photo)
  np.testing.assert_array_equal(a.photo_labels, c.photo_labels)
