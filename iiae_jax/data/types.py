"""The two shapes every dataset of the project takes."""
import dataclasses
from typing import Dict, List, Optional

import numpy as np


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
  """Class-level pairing for zero-shot retrieval (Sketchy protocol, SPEC §5a).

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

  @property
  def num_classes(self) -> int:
    return len(self.classes)
