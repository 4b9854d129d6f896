"""Random data of the real datasets' shapes, for benchmarks (no download, no learning signal beyond class means)."""
import functools

import numpy as np

from iiae_jax.data.types import ZeroShotData

# Sketchy Extended (docs/method.md §3a, §6): sketches, photos, classes of each split, by `sketchy_split`.
# Split 1's are the release's; split 2 (104 / 21 classes) shares out the same
# 75,479 sketches and 73,002 photos in proportion to the class counts.
SKETCHY_SIZES = {
    1: {"train": (61_058, 58_376, 100), "test": (14_421, 14_626, 25)},
    2: {"train": (62_799, 60_738, 104), "test": (12_680, 12_264, 21)},
}


@functools.lru_cache(maxsize=2)
def sketchy_like(split: str, seed: int = 0, feature_dim: int = 512,
                 sketchy_split: int = 1) -> ZeroShotData:
  """Features of Sketchy split `sketchy_split`'s sizes (1 or 2): class centres plus noise,
  non-negative like VGG ReLU features."""
  if sketchy_split not in SKETCHY_SIZES:
    raise ValueError(f"sketchy_split must be one of {sorted(SKETCHY_SIZES)}, got {sketchy_split!r}")
  sizes = SKETCHY_SIZES[sketchy_split]
  if split not in sizes:
    raise ValueError(f"synthetic_sketchy has splits {sorted(sizes)}, got {split!r}")
  n_sketch, n_photo, n_classes = sizes[split]
  stream = [seed, 0 if split == "train" else 1]
  rng = np.random.default_rng(stream if sketchy_split == 1 else stream + [sketchy_split])  # split 1: the stream [seed, part] alone
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
