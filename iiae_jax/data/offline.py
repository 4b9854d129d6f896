"""Offline datasets built from scikit-learn's bundled handwritten digits (no download).

The 1,797 real 8x8 digits of `sklearn.datasets.load_digits` are padded to a
10x10 canvas (a black margin, as MNIST has), upscaled with a bicubic kernel and
coloured. Two datasets follow the paper's two protocols (docs/method.md §5):

- `digits_cdcb`: MNIST-CDCB in spirit. X is the digit stroked in a palette
  colour on black, Y the same digit in white on a palette background; the
  handwriting is shared, the two colours are exclusive and drawn independently.
- `digits_zs`: zero-shot retrieval with class-level pairs. A sketch-like domain
  (the digit's outline) and a photo-like domain (filled, coloured, textured),
  flattened to features; 7 seen classes for training, 3 unseen for testing.

Splits are fixed by `SPLIT_SEED` (never by `seed`), so every seed sees the same
digit images in each split; `seed` only draws colours and textures.
"""
import functools
import importlib.util
import os
from typing import Tuple

import numpy as np
from scipy import ndimage

from iiae_jax.data.types import PairedData, ZeroShotData
from iiae_jax.errors import DatasetNotFoundError

# Ten saturated colours, none black or white, so that a stroke on black and a
# white digit on a background both stay visible. A colour's index is its class.
PALETTE_NAMES = ["red", "orange", "yellow", "green", "cyan",
                 "blue", "purple", "magenta", "brown", "gray"]
PALETTE = np.array([
    [0.90, 0.10, 0.10],
    [1.00, 0.55, 0.00],
    [0.95, 0.90, 0.10],
    [0.15, 0.75, 0.15],
    [0.10, 0.80, 0.90],
    [0.15, 0.30, 1.00],
    [0.55, 0.20, 0.80],
    [0.95, 0.20, 0.75],
    [0.55, 0.30, 0.10],
    [0.55, 0.55, 0.55],
], np.float32)
PALETTE.flags.writeable = False

DIGIT_NAMES = [f"digit_{d}" for d in range(10)]

# Split of the 1,797 digit images: a permutation with this fixed seed, then
# 20% test, 10% valid and the remaining 70% (1,258 images) train.
SPLIT_SEED = 20201207
SPLIT_FRACTIONS = {"train": 0.7, "valid": 0.1, "test": 0.2}
SPLIT_STREAMS = {"train": 0, "valid": 1, "test": 2}  # random streams of each split's colour draws

# digits_zs: three digits never seen in training (the zero-shot test classes).
UNSEEN_DIGITS = (2, 5, 8)
SEEN_DIGITS = tuple(d for d in range(10) if d not in UNSEEN_DIGITS)
SKETCH_RESOLUTION = 16  # sketch features: 16*16 = 256 values
PHOTO_RESOLUTION = 12   # photo features: 12*12*3 = 432 values

_CANVAS = 10       # the 8x8 digit with a one-pixel black margin
_HAZE = 0.02       # bicubic ringing leaves faint values around strokes; below this is background
_INK = 0.35        # grey level above which a pixel belongs to the digit (for sketch outlines)


def digits_file() -> str:
  """scikit-learn's bundled digits (what `sklearn.datasets.load_digits` reads), found without
  importing scikit-learn, whose import costs seconds."""
  spec = importlib.util.find_spec("sklearn")
  folders = list(spec.submodule_search_locations or []) if spec else []
  for folder in folders:
    path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
    if os.path.exists(path):
      return path
  raise DatasetNotFoundError("digits_cdcb / digits_zs: scikit-learn's bundled digits "
                             "(sklearn/datasets/data/digits.csv.gz) are missing: pip install scikit-learn")


@functools.lru_cache(maxsize=1)
def _raw_digits() -> Tuple[np.ndarray, np.ndarray]:
  """(canvases (1797, 10, 10) float32 in [0, 1], labels (1797,) int32)."""
  table = np.loadtxt(digits_file(), delimiter=",", dtype=np.float32)   # 64 pixels (0-16), the digit
  images = table[:, :-1].reshape(-1, 8, 8) / 16.0
  canvases = np.pad(images, ((0, 0), (1, 1), (1, 1)))
  labels = table[:, -1].astype(np.int32)
  return _read_only(canvases), _read_only(labels)


def _read_only(a: np.ndarray) -> np.ndarray:
  a.flags.writeable = False
  return a


def _cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
  """Keys' cubic convolution kernel (the usual 'bicubic')."""
  t = np.abs(t)
  near = ((a + 2) * t - (a + 3)) * t * t + 1
  far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


@functools.lru_cache(maxsize=16)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) bicubic weights, pixel-centre aligned; outside the canvas is black."""
  centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
  return _read_only(_cubic(centres[:, None] - np.arange(n_in)[None, :]).astype(np.float32))


def upscale(canvases: np.ndarray, resolution: int) -> np.ndarray:
  """Bicubic resize of (N, h, w) grey images in [0, 1] to (N, R, R), clipped to [0, 1]."""
  canvases = np.asarray(canvases, np.float32)
  rows = _resize_matrix(canvases.shape[-2], resolution)
  cols = _resize_matrix(canvases.shape[-1], resolution)
  gray = np.clip(rows @ canvases @ cols.T, 0.0, 1.0)
  gray[gray < _HAZE] = 0.0
  return gray


def _stroke(gray: np.ndarray, colors: np.ndarray) -> np.ndarray:
  """Digit in `colors` on black, in [-1, 1]."""
  rgb = gray[..., None] * colors[:, None, None, :]
  return (2.0 * rgb - 1.0).astype(np.float32)


def _on_background(gray: np.ndarray, colors: np.ndarray) -> np.ndarray:
  """White digit on a `colors` background, in [-1, 1]."""
  g = gray[..., None]
  rgb = g + (1.0 - g) * colors[:, None, None, :]
  return (2.0 * rgb - 1.0).astype(np.float32)


def colorize_pair(gray, x_colors, y_colors) -> Tuple[np.ndarray, np.ndarray]:
  """The CDCB pair of grey digits (N, H, W) in [0, 1] and RGB colours (N, 3) in [0, 1].

  Returns float32 (N, H, W, 3) images in [-1, 1]: X = the digit stroked in
  `x_colors` on black, Y = the digit in white on a `y_colors` background.
  """
  gray = np.asarray(gray, np.float32)
  x_colors = np.asarray(x_colors, np.float32)
  y_colors = np.asarray(y_colors, np.float32)
  n = gray.shape[0]
  if gray.ndim != 3 or x_colors.shape != (n, 3) or y_colors.shape != (n, 3):
    raise ValueError(f"colorize_pair expects gray (N, H, W) and colours (N, 3); got "
                     f"{gray.shape}, {x_colors.shape}, {y_colors.shape}")
  return _stroke(gray, x_colors), _on_background(gray, y_colors)


class ColoredDigits:
  """A lazy (N, R, R, 3) float32 array of coloured digits, computed when indexed.

  Holds only the 10x10 canvases and colour indices, so any resolution and any
  number of colourings cost no memory; `np.asarray(images)` materialises all.
  Supports integer, slice and integer-array indices on the first axis.
  """

  def __init__(self, canvases, image_of, colors, resolution: int, domain: str):
    self._canvases = canvases
    self._image_of = image_of
    self._colors = colors
    self._paint = {"x": _stroke, "y": _on_background}[domain]
    self.resolution = resolution
    self.domain = domain

  @property
  def shape(self) -> Tuple[int, int, int, int]:
    return (len(self._image_of), self.resolution, self.resolution, 3)

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(np.float32)

  @property
  def ndim(self) -> int:
    return 4

  def __len__(self) -> int:
    return len(self._image_of)

  def __getitem__(self, index):
    if isinstance(index, tuple):  # e.g. images[3, :, ::-1]: examples first, then the rest
      head = self[index[0]]
      examples = np.ndim(np.arange(len(self))[index[0]])
      return head[(slice(None),) * examples + index[1:]]
    selected = np.arange(len(self))[index]
    flat = selected.reshape(-1)
    # Colourings of one digit image share its upscaled ink: upscale each image once.
    images, inverse = np.unique(self._image_of[flat], return_inverse=True)
    gray = upscale(self._canvases[images], self.resolution)[inverse.reshape(-1)]
    painted = self._paint(gray, PALETTE[self._colors[flat]])
    return painted.reshape(selected.shape + painted.shape[1:])

  def __array__(self, dtype=None, copy=None):
    del copy  # always a fresh array
    images = self[:]
    return images if dtype is None else images.astype(dtype)

  def __repr__(self) -> str:
    return f"ColoredDigits(domain={self.domain!r}, shape={self.shape})"


def _check_split(split: str, allowed) -> None:
  if split not in allowed:
    raise ValueError(f"unknown split {split!r}; expected one of {list(allowed)}")


def _check_seed(seed) -> int:
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  return int(seed)


@functools.lru_cache(maxsize=1)
def split_images() -> dict:
  """{'train', 'valid', 'test'} -> sorted sklearn digit ids; disjoint, fixed by SPLIT_SEED."""
  n = len(_raw_digits()[1])
  order = np.random.default_rng(SPLIT_SEED).permutation(n)
  n_test = int(round(SPLIT_FRACTIONS["test"] * n))
  n_valid = int(round(SPLIT_FRACTIONS["valid"] * n))
  parts = {"test": order[:n_test], "valid": order[n_test:n_test + n_valid],
           "train": order[n_test + n_valid:]}
  return {k: _read_only(np.sort(v).astype(np.int32)) for k, v in parts.items()}


def draw_colors(seed: int, split: str, count: int) -> Tuple[np.ndarray, np.ndarray]:
  """(x_colors, y_colors): `count` PALETTE indices each, drawn independently from (seed, split)."""
  rng = np.random.default_rng([int(seed), SPLIT_STREAMS[split]])
  x_colors = rng.integers(len(PALETTE), size=count, dtype=np.int32)
  y_colors = rng.integers(len(PALETTE), size=count, dtype=np.int32)
  return x_colors, y_colors


def colored_pairs(name: str, split: str, canvases: np.ndarray, ids: np.ndarray, digits: np.ndarray,
                  x_colors: np.ndarray, y_colors: np.ndarray, resolution: int) -> PairedData:
  """The CDCB PairedData of grey `canvases[ids]` (digit classes `digits`) in the drawn colours.

  x and y are lazy `ColoredDigits` (N, R, R, 3) in [-1, 1]; factors "digit",
  "x_color", "y_color" (PALETTE indices) and "image" (`ids`: the handwriting).
  """
  return PairedData(
      name=name, split=split,
      x=ColoredDigits(canvases, ids, x_colors, int(resolution), "x"),
      y=ColoredDigits(canvases, ids, y_colors, int(resolution), "y"),
      factors={"digit": np.asarray(digits, np.int32), "x_color": x_colors, "y_color": y_colors,
               "image": np.asarray(ids, np.int32)},
      factor_names={"digit": list(DIGIT_NAMES), "x_color": list(PALETTE_NAMES),
                    "y_color": list(PALETTE_NAMES)})


@functools.lru_cache(maxsize=32)
def _cdcb_arrays(split: str, seed: int, copies: int):
  ids = np.tile(split_images()[split], copies)
  x_colors, y_colors = draw_colors(seed, split, len(ids))
  digits = _raw_digits()[1][ids]
  return tuple(_read_only(a) for a in (ids, digits, x_colors, y_colors))


def digits_cdcb(split: str, resolution: int = 32, seed: int = 0, copies: int = 8) -> PairedData:
  """Paired coloured digits (MNIST-CDCB in spirit) from scikit-learn's digits.

  Args:
    split: 'train' (1,258 digit images), 'valid' (180) or 'test' (359); the
      three hold disjoint images.
    resolution: side of the square RGB images (at least 8).
    seed: draws the colours; the same seed gives identical data.
    copies: colourings of each training image (train has `copies` * 1,258
      pairs, in `copies` blocks of all images); 'valid' and 'test' have one.

  Returns:
    PairedData whose x and y are lazy `ColoredDigits` arrays (N, R, R, 3) in
    [-1, 1]; factors "digit" (0-9), "x_color", "y_color" (PALETTE indices) and
    "image" (the sklearn digit id: the handwriting).
  """
  _check_split(split, SPLIT_FRACTIONS)
  seed = _check_seed(seed)
  if int(resolution) != resolution or resolution < 8:
    raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
  if int(copies) != copies or copies < 1:
    raise ValueError(f"copies must be a positive integer, got {copies!r}")
  copies = int(copies) if split == "train" else 1
  ids, digits, x_colors, y_colors = _cdcb_arrays(split, seed, copies)
  return colored_pairs("digits_cdcb", split, _raw_digits()[0], ids, digits, x_colors, y_colors,
                       resolution)


@functools.lru_cache(maxsize=1)
def zs_domains() -> Tuple[np.ndarray, np.ndarray]:
  """(sketch ids, photo ids): each class's digit images split in two halves, fixed by SPLIT_SEED."""
  labels = _raw_digits()[1]
  rng = np.random.default_rng([SPLIT_SEED, 1])
  sketch, photo = [], []
  for d in range(10):
    ids = rng.permutation(np.flatnonzero(labels == d))
    half = (len(ids) + 1) // 2
    sketch.append(ids[:half])
    photo.append(ids[half:])
  return (_read_only(np.sort(np.concatenate(sketch)).astype(np.int32)),
          _read_only(np.sort(np.concatenate(photo)).astype(np.int32)))


def _sketches(canvases: np.ndarray) -> np.ndarray:
  """Thin outlines, (N, 256) in {0, 1}: the inner morphological gradient of the inked digit."""
  ink = upscale(canvases, SKETCH_RESOLUTION) >= _INK
  cross = ndimage.generate_binary_structure(2, 1)[None]
  outline = ink & ~ndimage.binary_erosion(ink, cross)
  return outline.reshape(len(ink), -1).astype(np.float32)


def _photos(canvases: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Filled digits in a palette colour on a dim textured palette background, (N, 432)."""
  n = len(canvases)
  gray = upscale(canvases, PHOTO_RESOLUTION)[..., None]
  fill = PALETTE[rng.integers(len(PALETTE), size=n)][:, None, None, :]
  ground = PALETTE[rng.integers(len(PALETTE), size=n)][:, None, None, :]
  texture = 0.15 + 0.25 * rng.random((n, PHOTO_RESOLUTION, PHOTO_RESOLUTION, 1))
  rgb = gray * fill + (1.0 - gray) * ground * texture
  return rgb.reshape(n, -1)


@functools.lru_cache(maxsize=8)
def _zs_features(seed: int):
  canvases = _raw_digits()[0]
  sketch_ids, photo_ids = zs_domains()
  sketches = _sketches(canvases[sketch_ids])
  photos = _photos(canvases[photo_ids], np.random.default_rng([seed, 7]))
  return _read_only(sketches.astype(np.float32)), _read_only(photos.astype(np.float32))


def digits_zs(split: str, seed: int = 0) -> ZeroShotData:
  """Zero-shot sketch/photo features of scikit-learn's digits (docs/method.md §5a protocol).

  'train' holds the seen digits SEEN_DIGITS (7 classes), 'test' the unseen
  UNSEEN_DIGITS (2, 5, 8); `classes` are "digit_<d>" and labels index them.
  Sketches (256 values in {0, 1}) and photos (432 values in [0, 1]) of one
  class come from different digit images, so pairs are class-level only.
  `seed` draws the photos' colours and textures; sketches do not depend on it.
  Paths are "digit_<d>/sketch_<id>" and "digit_<d>/photo_<id>" (sklearn ids).
  """
  _check_split(split, ("train", "test"))
  seed = _check_seed(seed)
  labels = _raw_digits()[1]
  digits = SEEN_DIGITS if split == "train" else UNSEEN_DIGITS
  class_of = np.full(10, -1, np.int32)
  class_of[list(digits)] = np.arange(len(digits))
  sketch_ids, photo_ids = zs_domains()
  sketches, photos = _zs_features(seed)
  keep_s = class_of[labels[sketch_ids]] >= 0
  keep_p = class_of[labels[photo_ids]] >= 0

  def paths(ids, kind):
    return np.array([f"digit_{labels[i]}/{kind}_{i:04d}" for i in ids])

  return ZeroShotData(
      name="digits_zs", split=split,
      sketch=sketches[keep_s], sketch_labels=class_of[labels[sketch_ids[keep_s]]],
      photo=photos[keep_p], photo_labels=class_of[labels[photo_ids[keep_p]]],
      classes=[DIGIT_NAMES[d] for d in digits],
      sketch_paths=paths(sketch_ids[keep_s], "sketch"),
      photo_paths=paths(photo_ids[keep_p], "photo"))


def clear_cache() -> None:
  """Forgets every generated array (the next call regenerates them)."""
  for fn in (_raw_digits, _resize_matrix, split_images, _cdcb_arrays, zs_domains, _zs_features):
    fn.cache_clear()
