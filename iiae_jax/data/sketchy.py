"""Sketchy Extended VGG features in the layout of the IIAE release (docs/method.md §6).

    <root>/split{1,2}/{train,test}_{sketch,image}_{features,paths}.npy

Features are float (N, 512); paths are strings 'class/file' whose
second-to-last component is the class. Classes are listed in sorted order and
labels index that list (the reference orders them by first appearance; the
order changes no metric).
"""
import os
import pickle
import warnings
from typing import List, Tuple

import numpy as np

from iiae_jax.data.errors import missing_dataset
from iiae_jax.errors import DatasetFormatError
from iiae_jax.data.types import ZeroShotData

# Item counts of the canonical split 1 (100 seen / 25 unseen classes). Split 2
# (104 / 21) has no published counts here, so it is not checked.
SPLIT1_COUNTS = {
    ("train", "sketch"): 61058, ("test", "sketch"): 14421,
    ("train", "image"): 58376, ("test", "image"): 14626,
}
# Seen (train) / unseen (test) classes of each split (docs/method.md §6).
CLASS_COUNTS = {1: {"train": 100, "test": 25}, 2: {"train": 104, "test": 21}}


def _load_features(path: str, feature_dim: int) -> np.ndarray:
  try:
    features = np.load(path, allow_pickle=False)
  except EOFError:
    raise DatasetFormatError(f"{path}: cannot read features: the file is empty") from None
  except ValueError as e:  # object arrays or a file that is not .npy
    raise DatasetFormatError(f"{path}: cannot read features: {e}") from None
  name = os.path.basename(path)
  if features.ndim != 2 or features.shape[1] != feature_dim:
    raise DatasetFormatError(
        f"{path}: features must have shape (N, {feature_dim}), got {features.shape} "
        f"(set feature_dim if {name} holds features of another width)")
  if not np.issubdtype(features.dtype, np.number):
    raise DatasetFormatError(f"{path}: features must be numeric, got dtype {features.dtype}")
  features = features.astype(np.float32)
  bad = ~np.isfinite(features)
  if bad.any():
    rows = np.flatnonzero(bad.any(axis=1))
    kinds = [k for k, m in (("NaN", np.isnan(features)), ("inf", np.isinf(features))) if m.any()]
    raise DatasetFormatError(
        f"{path}: {int(bad.sum())} non-finite values ({' and '.join(kinds)}) "
        f"in {len(rows)} rows, first row {int(rows[0])}")
  return features


def _load_paths(path: str) -> np.ndarray:
  try:
    paths = np.load(path, allow_pickle=False)
  except EOFError:
    raise DatasetFormatError(f"{path}: cannot read paths: the file is empty") from None
  except ValueError:  # the release's object arrays of Python strings
    paths = read_string_objects(path)
  if paths.ndim != 1:
    raise DatasetFormatError(f"{path}: paths must be one-dimensional, got shape {paths.shape}")
  texts = [p.decode() if isinstance(p, bytes) else str(p) for p in paths.tolist()]
  return np.array([t.replace("\\", "/") for t in texts], dtype=str)


class _StringArrayUnpickler(pickle.Unpickler):
  """Builds only what an object array of strings holds: numpy arrays and dtypes, str and bytes."""

  ALLOWED = {
      ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
      ("numpy", "ndarray"), ("numpy", "dtype"),
  }

  def __init__(self, file, path: str):
    super().__init__(file, fix_imports=True, encoding="ASCII")  # np.load's own defaults
    self.path = path

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise DatasetFormatError(
          f"{self.path}: refused to unpickle {module}.{name}: a path file holds only strings")
    return super().find_class(module, name)


def read_string_objects(path: str) -> np.ndarray:
  """The object array of str (or bytes) in .npy file `path`, unpickled with nothing else allowed.

  np.load(allow_pickle=True) would run any code the file's pickle names; here
  a global other than numpy's array and dtype reconstruction is refused with a
  DatasetFormatError naming the file and the global, before it is called.
  """
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                     (2, 0): np.lib.format.read_array_header_2_0}.get(version)
      if read_header is None:
        raise DatasetFormatError(f"{path}: cannot read paths: .npy format version {version} is not supported")
      shape, _, dtype = read_header(f)
      if dtype != np.dtype(object):
        raise DatasetFormatError(f"{path}: cannot read paths: dtype {dtype} is neither strings nor objects")
      array = _StringArrayUnpickler(f, path).load()
  except DatasetFormatError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # a damaged header or pickle
    raise DatasetFormatError(f"{path}: cannot read paths ({type(e).__name__}: {e})") from None
  if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
    raise DatasetFormatError(f"{path}: cannot read paths: the pickle does not hold a {tuple(shape)} array")
  wrong = next((item for item in array.flat if not isinstance(item, (str, bytes))), None)
  if wrong is not None:
    raise DatasetFormatError(f"{path}: paths must be strings, found a {type(wrong).__name__}")
  return array


def class_of_path(path: str) -> str:
  """The class of a Sketchy path: its second-to-last component."""
  parts = path.rstrip("/").split("/")
  if len(parts) < 2:
    raise ValueError(f"path {path!r} has no class component ('class/file' expected)")
  return parts[-2]


def _domain(directory: str, split: str, domain: str, feature_dim: int,
            check_counts: bool) -> Tuple[np.ndarray, List[str], np.ndarray]:
  files = [os.path.join(directory, f"{split}_{domain}_{kind}.npy") for kind in ("features", "paths")]
  for f in files:
    if not os.path.isfile(f):
      raise missing_dataset("sketchy", os.path.dirname(directory), missing=f)
  features = _load_features(files[0], feature_dim)
  paths = _load_paths(files[1])
  if len(paths) != len(features):
    raise DatasetFormatError(
        f"{files[1]} has {len(paths)} paths but {files[0]} has {len(features)} rows")
  if check_counts and len(features) != SPLIT1_COUNTS[(split, domain)]:
    warnings.warn(
        f"{files[0]} has {len(features)} items; the canonical Sketchy Extended split 1 "
        f"has {SPLIT1_COUNTS[(split, domain)]}", stacklevel=3)
  try:
    classes = [class_of_path(p) for p in paths]
  except ValueError as e:
    raise DatasetFormatError(f"{files[1]}: {e}") from None
  return features, classes, paths


def load_sketchy(root: str, split: str, sketchy_split: int = 1, feature_dim: int = 512) -> ZeroShotData:
  """Sketch and photo features of one split of Sketchy Extended.

  Args:
    root: the SketchyVGG folder (holding split1/ and split2/).
    split: 'train' (seen classes) or 'test' (unseen classes).
    sketchy_split: 1 (100 / 25 classes) or 2 (104 / 21 classes).
    feature_dim: the expected feature width.

  Raises:
    DatasetNotFoundError: a missing folder or file (named, with download steps).
    DatasetFormatError: a wrong feature width, NaN or inf in features, paths
      and features of different lengths, sketches and photos of different
      classes, or a class listed in both the train and the test files (zero-shot
      retrieval needs unseen test classes); the file is named in the message.
  """
  if split not in ("train", "test"):
    raise ValueError(f"Sketchy has splits 'train' and 'test', got {split!r}")
  if sketchy_split not in (1, 2):
    raise ValueError(f"sketchy_split must be 1 or 2, got {sketchy_split!r}")
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise missing_dataset("sketchy", root)
  directory = os.path.join(root, f"split{sketchy_split}")
  if not os.path.isdir(directory):
    raise missing_dataset("sketchy", root, missing=directory)
  check = sketchy_split == 1
  sketch, sketch_classes, sketch_paths = _domain(directory, split, "sketch", feature_dim, check)
  photo, photo_classes, photo_paths = _domain(directory, split, "image", feature_dim, check)
  if set(sketch_classes) != set(photo_classes):
    only = sorted(set(sketch_classes) ^ set(photo_classes))
    raise DatasetFormatError(
        f"{directory}: {split}_sketch_paths.npy and {split}_image_paths.npy list different "
        f"classes; in one only: {only[:10]}")
  classes = sorted(set(sketch_classes))
  _check_unseen(directory, split, classes)
  if len(classes) != CLASS_COUNTS[sketchy_split][split]:
    warnings.warn(
        f"{directory}: {split}_sketch_paths.npy lists {len(classes)} classes; the canonical "
        f"Sketchy Extended split {sketchy_split} has {CLASS_COUNTS[sketchy_split][split]}",
        stacklevel=2)
  index = {c: i for i, c in enumerate(classes)}
  return ZeroShotData(
      name="sketchy", split=split,
      sketch=sketch, sketch_labels=np.array([index[c] for c in sketch_classes], np.int32),
      photo=photo, photo_labels=np.array([index[c] for c in photo_classes], np.int32),
      classes=classes, sketch_paths=sketch_paths, photo_paths=photo_paths)


def _check_unseen(directory: str, split: str, classes: List[str]) -> None:
  """Raises DatasetFormatError if the other split's path files list any of `classes`.

  Zero-shot retrieval scores the test (unseen) classes of a model trained on
  the train (seen) ones: a class in both, from a misplaced file of the other
  split, would inflate every score without any other sign.
  """
  other = "test" if split == "train" else "train"
  for domain in ("sketch", "image"):
    path = os.path.join(directory, f"{other}_{domain}_paths.npy")
    try:
      other_paths = _load_paths(path) if os.path.isfile(path) else ()
    except DatasetFormatError:  # reported when that split is loaded
      continue
    other_classes = set()
    for p in other_paths:
      try:
        other_classes.add(class_of_path(p))
      except ValueError:  # reported when that split is loaded
        pass
    shared = sorted(set(classes) & other_classes)
    if shared:
      raise DatasetFormatError(
          f"{directory}: {split}_sketch_paths.npy and {os.path.basename(path)} share "
          f"{len(shared)} classes ({', '.join(shared[:10])}); the train (seen) and test (unseen) "
          f"classes of a zero-shot split must be disjoint")
