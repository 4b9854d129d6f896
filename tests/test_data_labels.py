"""Class labels are checked where they enter: the data types every loader returns, and the
trainer's zero-shot input at start-up (a bad index would be clamped on the device, silently)."""
import numpy as np
import pytest

from iiae_jax import data, input_pipeline
from iiae_jax.data import PairedData, ZeroShotData
from iiae_jax.errors import DatasetFormatError


def _features(n, dim=4):
  return np.ones((n, dim), np.float32)


def test_a_zero_shot_label_outside_the_classes_is_named_with_the_class_count():
  with pytest.raises(DatasetFormatError) as err:
    ZeroShotData("feats", "train", _features(4), np.array([0, 1, 2, 1]), _features(3),
                 np.array([0, 5, 1]), ["a", "b", "c"])
  assert str(err.value) == ("feats/train photo_labels: label 5 at item 1 is not a class index in "
                            "[0, 3) (3 classes; 1 labels outside)")
  with pytest.raises(DatasetFormatError, match=r"sketch_labels: label -1 at item 3 "):
    ZeroShotData("feats", "train", _features(4), np.array([0, 1, 2, -1]), _features(3),
                 np.array([0, 1, 2]), ["a", "b", "c"])


def test_zero_shot_labels_need_one_integer_per_item():
  with pytest.raises(DatasetFormatError, match=r"feats/test sketch_labels: expected 4 labels \(one per "
                                               r"item\), got shape \(3,\)"):
    ZeroShotData("feats", "test", _features(4), np.array([0, 1, 0]), _features(2), np.array([0, 1]),
                 ["a", "b"])
  with pytest.raises(DatasetFormatError, match="photo_labels: labels must be integer class indices"):
    ZeroShotData("feats", "test", _features(2), np.array([0, 1]), _features(2), np.array([0.0, 1.5]),
                 ["a", "b"])


def test_a_named_factor_must_index_its_names_and_every_factor_have_one_value_per_pair():
  images = np.zeros((3, 2, 2, 3), np.float32)
  with pytest.raises(DatasetFormatError, match=r"pairs/valid factor 'digit': label 10 at item 2 is "
                                               r"not a class index in \[0, 10\) \(10 classes"):
    PairedData("pairs", "valid", images, images, factors={"digit": np.array([0, 9, 10])},
               factor_names={"digit": [str(d) for d in range(10)]})
  with pytest.raises(DatasetFormatError, match=r"factor 'image': expected 3 labels"):
    PairedData("pairs", "valid", images, images, factors={"image": np.arange(4)})
  # A factor without names is not a class: any integers, one per pair.
  ids = PairedData("pairs", "valid", images, images, factors={"image": np.array([7, 123456, 3])})
  np.testing.assert_array_equal(ids.batch([1])["image"], [123456])


def test_the_zero_shot_input_checks_the_labels_once_at_start_up():
  from configs import digits_zs
  config = digits_zs.get_config()
  train = data.load("digits_zs", "train")
  input_pipeline.ZeroShotInput(config, train)                   # as loaded: fine
  train.sketch_labels = train.sketch_labels[:-1]                # one label short: rows would go unseen
  with pytest.raises(DatasetFormatError, match=rf"digits_zs/train sketch_labels: expected "
                                               rf"{len(train.sketch)} labels"):
    input_pipeline.ZeroShotInput(config, train)
  train = data.load("digits_zs", "train")
  train.photo_labels = train.photo_labels.copy()
  train.photo_labels[4] = 7                                     # 7 seen classes: 0..6
  with pytest.raises(DatasetFormatError, match=r"digits_zs/train photo_labels: label 7 at item 4 is not "
                                               r"a class index in \[0, 7\) \(7 classes"):
    input_pipeline.ZeroShotInput(config, train)
