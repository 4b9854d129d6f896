"""`mnist_cdcb_rebuilt`: MNIST-CDCB-like pairs made from the raw MNIST idx files (docs/method.md §6).

    <root>/{train-images-idx3-ubyte, train-labels-idx1-ubyte,
            t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}[.gz]

The digits are coloured with the offline palette and recipe of `offline.digits_cdcb`;
this is not the release's pair files (the dataset `mnist_cdcb`, read by `load_pix2pix`).
"""
import gzip
import os
from typing import Tuple

import numpy as np

from iiae_jax.data import offline
from iiae_jax.data.errors import missing_dataset
from iiae_jax.data.types import PairedData
from iiae_jax.errors import DatasetFormatError

# The files tfds's own `mnist` builder downloads.
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def read_idx(path: str) -> np.ndarray:
  """A uint8 idx array (MNIST format; gzipped if the file is)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    if data[:2] == b"\x1f\x8b":
      data = gzip.decompress(data)
  except (OSError, EOFError) as e:
    raise DatasetFormatError(f"{path}: cannot read idx file ({type(e).__name__}: {e})") from e
  if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
    raise DatasetFormatError(f"{path}: not a uint8 idx file (bad magic number {data[:4].hex()})")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DatasetFormatError(f"{path}: truncated idx header")
  shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4"))
  size = int(np.prod(shape, dtype=np.int64))
  if len(data) - header != size:
    raise DatasetFormatError(
        f"{path}: idx header says shape {shape} ({size} bytes) but {len(data) - header} bytes follow")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def find_mnist_file(mnist_dir: str, part: str, kind: str) -> str:
  """The path of an MNIST idx file (plain or .gz) in `mnist_dir`; DatasetNotFoundError if absent."""
  base = os.path.join(os.fspath(mnist_dir), MNIST_FILES[(part, kind)])
  for path in (base, base + ".gz"):
    if os.path.isfile(path):
      return path
  raise missing_dataset("mnist_cdcb_rebuilt", os.fspath(mnist_dir), missing=base + "[.gz]")


def read_mnist(mnist_dir: str, part: str) -> Tuple[np.ndarray, np.ndarray]:
  """(images (N, H, W) uint8, labels (N,) uint8) of MNIST part 'train' or 'test'."""
  image_path = find_mnist_file(mnist_dir, part, "images")
  label_path = find_mnist_file(mnist_dir, part, "labels")
  images, labels = read_idx(image_path), read_idx(label_path)
  if images.ndim != 3:
    raise DatasetFormatError(f"{image_path}: expected (N, H, W) images, got shape {images.shape}")
  if labels.shape != (len(images),):
    raise DatasetFormatError(
        f"{label_path}: expected {len(images)} labels (one per image), got shape {labels.shape}")
  if labels.size and labels.max() > 9:
    raise DatasetFormatError(f"{label_path}: labels must be digits 0-9, found {labels.max()}")
  return images, labels


def mnist_split_ids(num_train: int, num_test: int, split: str) -> Tuple[str, np.ndarray]:
  """(MNIST part, image ids) of a split: the last sixth of MNIST train (10,000) is 'valid'."""
  num_valid = num_train // 6
  if split == "train":
    return "train", np.arange(num_train - num_valid)
  if split == "valid":
    return "train", np.arange(num_train - num_valid, num_train)
  if split == "test":
    return "test", np.arange(num_test)
  raise ValueError(f"unknown split {split!r}; expected 'train', 'valid' or 'test'")


def mnist_cdcb(mnist_dir: str, split: str, resolution: int = 32, seed: int = 0) -> PairedData:
  """MNIST-CDCB pairs made from raw MNIST with the offline colouring recipe.

  X is the digit stroked in a PALETTE colour on black, Y the white digit on a
  PALETTE background (`offline.colorize_pair`), both upscaled bicubically from
  28x28 to `resolution`; colours are drawn per pair from `seed` (independently
  for X and Y), as `offline.digits_cdcb` draws them. Splits: 'train' = MNIST
  train images 0-49,999, 'valid' = 50,000-59,999, 'test' = the 10,000 MNIST
  test images. Factors "digit", "x_color", "y_color" and "image" (the id in
  the MNIST file). This rebuilds MNIST-CDCB in the paper's spirit; it is not
  the pair files of the original release (read those with `load_pix2pix`).
  """
  parts = {part: read_mnist(mnist_dir, part) for part in ("train", "test")}
  part, ids = mnist_split_ids(len(parts["train"][0]), len(parts["test"][0]), split)
  images, labels = parts[part]
  x_colors, y_colors = offline.draw_colors(seed, split, len(ids))
  return offline.colored_pairs("mnist_cdcb", split, images.astype(np.float32) / 255.0, ids,
                               labels[ids], x_colors, y_colors, resolution)
