"""The Sketchy Extended VGG feature loader, on tiny files in the release's layout."""
import os
import warnings

import numpy as np
import pytest

from iiae_jax import data
from iiae_jax.data import DatasetFormatError, DatasetNotFoundError

pytestmark = pytest.mark.filterwarnings("ignore:.*canonical Sketchy Extended")

DIM = 8
TRAIN_CLASSES = ["cat", "airplane", "zebra"]
TEST_CLASSES = ["bear", "tree"]


def write_sketchy(data_dir, split=1, object_paths=False, prefix=""):
  """Writes <data_dir>/SketchyVGG/split<split>/ with a few items per class; returns what was written."""
  directory = os.path.join(data_dir, "SketchyVGG", f"split{split}")
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  written = {}
  for part, classes in (("train", TRAIN_CLASSES), ("test", TEST_CLASSES)):
    for domain, per_class in (("sketch", 4), ("image", 3)):
      # Items interleaved across classes, as a real file need not be sorted.
      paths = [f"{prefix}{c}/{c}_{i}.{'png' if domain == 'sketch' else 'jpg'}"
               for i in range(per_class) for c in classes]
      features = rng.random((len(paths), DIM))
      paths = np.array(paths, dtype=object if object_paths else str)
      np.save(os.path.join(directory, f"{part}_{domain}_features.npy"), features)
      np.save(os.path.join(directory, f"{part}_{domain}_paths.npy"), paths, allow_pickle=True)
      written[(part, domain)] = (features, [str(p) for p in paths])
  return written


def _path(data_dir, name, split=1):
  return os.path.join(data_dir, "SketchyVGG", f"split{split}", name)


@pytest.mark.parametrize("object_paths", [False, True])
@pytest.mark.parametrize("part,classes", [("train", TRAIN_CLASSES), ("test", TEST_CLASSES)])
def test_load_gives_features_labels_and_classes_from_paths(tmp_path, object_paths, part, classes):
  written = write_sketchy(tmp_path, object_paths=object_paths)
  ds = data.load("sketchy", part, data_dir=str(tmp_path), feature_dim=DIM)
  assert ds.name == "sketchy" and ds.split == part
  assert ds.classes == sorted(classes)
  for domain, feats, labels, paths in (("sketch", ds.sketch, ds.sketch_labels, ds.sketch_paths),
                                       ("image", ds.photo, ds.photo_labels, ds.photo_paths)):
    expected, expected_paths = written[(part, domain)]
    assert feats.dtype == np.float32 and feats.shape == expected.shape
    np.testing.assert_allclose(feats, expected, rtol=1e-6)
    assert labels.dtype == np.int32 and labels.shape == (len(expected),)
    assert list(paths) == expected_paths
    assert [ds.classes[l] for l in labels] == [p.split("/")[0] for p in expected_paths]


def test_class_is_the_second_to_last_path_component(tmp_path):
  write_sketchy(tmp_path, split=2, prefix="Sketchy/photo/tx_000000000000/")
  ds = data.load("sketchy", "train", data_dir=str(tmp_path), sketchy_split=2, feature_dim=DIM)
  assert ds.classes == sorted(TRAIN_CLASSES)
  assert [ds.classes[l] for l in ds.photo_labels] == [p.split("/")[-2] for p in ds.photo_paths]


def test_count_warning_names_file_and_both_counts(tmp_path):
  write_sketchy(tmp_path)
  with pytest.warns(UserWarning) as record:
    data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=DIM)
  messages = [str(w.message) for w in record]
  sketch = [m for m in messages if "train_sketch_features.npy" in m]
  assert sketch and "61058" in sketch[0] and " 12 " in sketch[0]
  assert any("train_image_features.npy" in m and "58376" in m for m in messages)


def test_no_item_count_warning_for_split_2(tmp_path):
  # Split 2 has no published item counts; its class counts (104 / 21) are checked.
  write_sketchy(tmp_path, split=2)
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    data.load("sketchy", "test", data_dir=str(tmp_path), sketchy_split=2, feature_dim=DIM)
  assert [str(w.message) for w in record] == [
      f"{_path(tmp_path, '', split=2).rstrip(os.sep)}: test_sketch_paths.npy lists 2 classes; "
      "the canonical Sketchy Extended split 2 has 21"]


def test_missing_directory_says_what_to_download(tmp_path):
  with pytest.raises(DatasetNotFoundError) as err:
    data.load("sketchy", "train", data_dir=str(tmp_path))
  assert isinstance(err.value, FileNotFoundError)
  assert "SketchyVGG" in str(err.value) and "10.5281/zenodo.3890097" in str(err.value)


def test_missing_split_directory_is_named(tmp_path):
  write_sketchy(tmp_path, split=1)
  with pytest.raises(DatasetNotFoundError, match="split2"):
    data.load("sketchy", "train", data_dir=str(tmp_path), sketchy_split=2, feature_dim=DIM)


@pytest.mark.parametrize("name", ["test_image_paths.npy", "test_sketch_features.npy"])
def test_missing_split_file_is_named(tmp_path, name):
  write_sketchy(tmp_path)
  os.remove(_path(tmp_path, name))
  with pytest.raises(DatasetNotFoundError, match=name):
    data.load("sketchy", "test", data_dir=str(tmp_path), feature_dim=DIM)


@pytest.mark.parametrize("name", ["train_sketch_features.npy", "train_sketch_paths.npy"])
def test_an_empty_file_is_named(tmp_path, name):
  """A 0-byte file (an interrupted copy) is reported by its path, not as numpy's bare EOFError."""
  write_sketchy(tmp_path)
  open(_path(tmp_path, name), "wb").close()
  with pytest.raises(DatasetFormatError, match=rf"{name}: cannot read .*: the file is empty"):
    data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=DIM)


def test_wrong_feature_width_is_named(tmp_path):
  write_sketchy(tmp_path)
  with pytest.raises(DatasetFormatError) as err:
    data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=512)
  assert isinstance(err.value, ValueError)
  assert "train_sketch_features.npy" in str(err.value) and "512" in str(err.value)


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_features_are_named(tmp_path, bad, word):
  write_sketchy(tmp_path)
  path = _path(tmp_path, "train_image_features.npy")
  features = np.load(path)
  features[2, 5] = bad
  np.save(path, features)
  with pytest.raises(DatasetFormatError) as err:
    data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=DIM)
  assert "train_image_features.npy" in str(err.value) and word in str(err.value)


def test_paths_and_features_of_different_lengths_are_named(tmp_path):
  write_sketchy(tmp_path)
  path = _path(tmp_path, "test_sketch_paths.npy")
  np.save(path, np.load(path)[:-1])
  with pytest.raises(DatasetFormatError) as err:
    data.load("sketchy", "test", data_dir=str(tmp_path), feature_dim=DIM)
  assert "test_sketch_paths.npy" in str(err.value) and "test_sketch_features.npy" in str(err.value)


def test_sketch_and_photo_classes_must_agree(tmp_path):
  write_sketchy(tmp_path)
  path = _path(tmp_path, "train_image_paths.npy")
  paths = np.load(path)
  np.save(path, np.array([p.replace("zebra", "horse") for p in paths]))
  with pytest.raises(DatasetFormatError, match="horse"):
    data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=DIM)


def test_path_without_class_is_named(tmp_path):
  write_sketchy(tmp_path)
  path = _path(tmp_path, "train_sketch_paths.npy")
  paths = np.load(path)
  paths[0] = "no_class_component.png"
  np.save(path, paths)
  with pytest.raises(DatasetFormatError, match="train_sketch_paths.npy"):
    data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=DIM)


@pytest.mark.parametrize("part,other", [("train", "test"), ("test", "train")])
def test_a_class_in_both_train_and_test_is_refused(tmp_path, part, other):
  # Zero-shot scores are only meaningful on unseen classes: a misplaced file of the
  # other split would otherwise inflate them silently.
  write_sketchy(tmp_path)
  path = _path(tmp_path, f"{other}_image_paths.npy")
  paths = np.load(path)
  paths[0] = "zebra/zebra_9.jpg" if other == "test" else "tree/tree_9.jpg"
  np.save(path, paths)
  with pytest.raises(DatasetFormatError, match=f"{other}_image_paths.npy.*(zebra|tree).*disjoint"):
    data.load("sketchy", part, data_dir=str(tmp_path), feature_dim=DIM)


def test_class_count_warning_names_both_counts(tmp_path):
  write_sketchy(tmp_path)
  with pytest.warns(UserWarning, match="lists 3 classes; the canonical Sketchy Extended split 1 has 100"):
    data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=DIM)


def test_a_damaged_file_of_the_other_split_does_not_stop_this_one(tmp_path):
  write_sketchy(tmp_path)
  with open(_path(tmp_path, "test_image_paths.npy"), "wb") as f:
    f.write(b"not npy")
  assert data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=DIM).classes == sorted(TRAIN_CLASSES)
  with pytest.raises(DatasetFormatError, match="test_image_paths.npy"):
    data.load("sketchy", "test", data_dir=str(tmp_path), feature_dim=DIM)


class _MakesADirectory:
  """Unpickled, it runs os.mkdir(path): what a tampered path file could do as the user."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return os.mkdir, (self.path,)


def _tamper(path, marker):
  paths = np.load(path).tolist()
  np.save(path, np.array([_MakesADirectory(marker)] + paths[1:], dtype=object), allow_pickle=True)


def test_a_path_file_whose_pickle_would_run_code_is_refused_and_nothing_runs(tmp_path):
  write_sketchy(tmp_path)
  control = _path(tmp_path, "control.npy")
  np.save(control, np.load(_path(tmp_path, "train_sketch_paths.npy")))
  _tamper(control, tmp_path / "made_by_numpy")
  np.load(control, allow_pickle=True)
  assert (tmp_path / "made_by_numpy").is_dir()        # the payload is live when unpickled freely
  path = _path(tmp_path, "train_sketch_paths.npy")
  _tamper(path, tmp_path / "made_by_the_loader")
  with pytest.raises(DatasetFormatError) as err:
    data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=DIM)
  assert not (tmp_path / "made_by_the_loader").exists()
  assert str(err.value) == (f"{path}: refused to unpickle {os.mkdir.__module__}.mkdir: "
                            "a path file holds only strings")
  # The other split's path files are read too (to check the classes are disjoint).
  write_sketchy(tmp_path)
  _tamper(_path(tmp_path, "test_image_paths.npy"), tmp_path / "made_by_the_check")
  data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=DIM)
  assert not (tmp_path / "made_by_the_check").exists()


def test_object_path_files_of_str_bytes_and_numpy_strings_load(tmp_path):
  written = write_sketchy(tmp_path)
  path = _path(tmp_path, "test_image_paths.npy")
  paths = written[("test", "image")][1]
  mixed = [p.encode() if i % 3 == 0 else np.str_(p) if i % 3 == 1 else p for i, p in enumerate(paths)]
  np.save(path, np.array(mixed, dtype=object), allow_pickle=True)
  ds = data.load("sketchy", "test", data_dir=str(tmp_path), feature_dim=DIM)
  assert list(ds.photo_paths) == paths


def test_an_object_path_file_holding_other_objects_is_refused(tmp_path):
  write_sketchy(tmp_path)
  path = _path(tmp_path, "train_image_paths.npy")
  np.save(path, np.array([3, "cat/cat_0.jpg"], dtype=object), allow_pickle=True)
  with pytest.raises(DatasetFormatError, match=r"train_image_paths.npy: paths must be strings, found a int"):
    data.load("sketchy", "train", data_dir=str(tmp_path), feature_dim=DIM)
