"""Random data of the real datasets' shapes, for benchmarks (no download, no learning signal beyond class means)."""
import functools

import numpy as np

from iiae_jax.data.types import ZeroShotData

# Sketchy Extended split 1 (SPEC §6): sketches / photos per split, classes.
SKETCHY_SPLIT1 = {"train": (61_058, 58_376, 100), "test": (14_421, 14_626, 25)}


@functools.lru_cache(maxsize=2)
def sketchy_like(split: str, seed: int = 0, feature_dim: int = 512) -> ZeroShotData:
  """Sketchy-split-1-sized features: class centres plus noise, non-negative like VGG ReLU features."""
  if split not in SKETCHY_SPLIT1:
    raise ValueError(f"synthetic_sketchy has splits {sorted(SKETCHY_SPLIT1)}, got {split!r}")
  n_sketch, n_photo, n_classes = SKETCHY_SPLIT1[split]
  rng = np.random.default_rng([seed, 0 if split == "train" else 1])
  centres = rng.normal(size=(n_classes, feature_dim)).astype(np.float32)

  def domain(n):
    labels = np.sort(rng.integers(0, n_classes, n)).astype(np.int32)
    labels[:n_classes] = np.arange(n_classes)  # every class present
    feats = centres[labels] + rng.normal(size=(n, feature_dim)).astype(np.float32)
    return np.maximum(feats, 0.0), labels

  sketch, sketch_labels = domain(n_sketch)
  photo, photo_labels = domain(n_photo)
  classes = [f"class_{c:03d}" for c in range(n_classes)]
  return ZeroShotData("synthetic_sketchy", split, sketch, sketch_labels, photo, photo_labels, classes)
