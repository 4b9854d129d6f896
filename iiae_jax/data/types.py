"""The two shapes every dataset of the project takes, and the check of their class labels."""
import dataclasses
from typing import Dict, List, Optional

import numpy as np

from iiae_jax.errors import DatasetFormatError


def check_class_labels(labels, num_classes: Optional[int], count: int, what: str) -> None:
  """Raises DatasetFormatError naming `what` unless `labels` are `count` integer class
  indices in [0, num_classes): the first value outside and the class count are named.
  num_classes None checks the count alone."""
  labels = np.asarray(labels)
  if labels.shape != (count,):
    raise DatasetFormatError(f"{what}: expected {count} labels (one per item), got shape {labels.shape}")
  if num_classes is None:
    return
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise DatasetFormatError(f"{what}: labels must be integer class indices, got dtype {labels.dtype}")
  outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if outside.size:
    first = int(outside[0])
    raise DatasetFormatError(
        f"{what}: label {int(labels[first])} at item {first} is not a class index in "
        f"[0, {num_classes}) ({num_classes} classes; {outside.size} labels outside)")


@dataclasses.dataclass
class PairedData:
  """Instance-level pairs (x_i, y_i) of two image domains (or any arrays).

  `x` and `y` are array-likes of shape (N, H, W, C), float32 in [-1, 1]:
  numpy arrays, or lazy readers that support `len()`, `.shape`, `.dtype` and
  indexing with an integer index array (decoding only what is asked for).
  `factors` holds ground-truth integer factors per pair (e.g. "digit",
  "x_color", "y_color"), each of shape (N,); it may be empty.
  """
  name: str
  split: str
  x: object
  y: object
  factors: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  factor_names: Dict[str, List[str]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.check_labels()

  def check_labels(self) -> None:
    """DatasetFormatError unless every factor has one value per pair and each factor with
    `factor_names` (a class) indexes them."""
    for name, values in self.factors.items():
      names = self.factor_names.get(name)
      check_class_labels(values, None if names is None else len(names), len(self.x),
                         f"{self.name}/{self.split} factor {name!r}")

  def __len__(self) -> int:
    return len(self.x)

  def batch(self, indices) -> Dict[str, np.ndarray]:
    """{"x", "y", and every factor} at `indices`, as numpy arrays."""
    indices = np.asarray(indices)
    out = {"x": np.asarray(self.x[indices]), "y": np.asarray(self.y[indices])}
    out.update({k: v[indices] for k, v in self.factors.items()})
    return out


@dataclasses.dataclass
class ZeroShotData:
  """Class-level pairing for zero-shot retrieval (Sketchy protocol, docs/method.md §5a).

  `sketch` (N_s, d_x) and `photo` (N_p, d_y) float32 features of domains X and
  Y; `*_labels` int32 indices into `classes` (the classes of this split only;
  seen and unseen splits have disjoint `classes`).
  """
  name: str
  split: str
  sketch: np.ndarray
  sketch_labels: np.ndarray
  photo: np.ndarray
  photo_labels: np.ndarray
  classes: List[str]
  sketch_paths: Optional[np.ndarray] = None
  photo_paths: Optional[np.ndarray] = None

  def __post_init__(self):
    self.check_labels()

  def check_labels(self) -> None:
    """DatasetFormatError unless each sketch and photo has one label, an index into `classes`."""
    for domain, items, labels in (("sketch", self.sketch, self.sketch_labels),
                                  ("photo", self.photo, self.photo_labels)):
      check_class_labels(labels, self.num_classes, len(items), f"{self.name}/{self.split} {domain}_labels")

  @property
  def num_classes(self) -> int:
    return len(self.classes)
