"""Datasets of the paper and the offline ones, behind one `load(name, split)`.

    from iiae_jax import data
    train = data.load("digits_cdcb", "train")                 # generated, no download
    test = data.load("sketchy", "test", data_dir="/datasets")  # <data_dir>/SketchyVGG/split1/...

`load` returns a `PairedData` (instance-level image pairs) or a `ZeroShotData`
(class-level sketch/photo features); `DATASETS` lists every name with its
loader and the options it takes, `loader_options(name, source)` those options.
"""
import functools
import os
from typing import Any, Callable, Mapping, NamedTuple, Optional, Tuple, Union

from iiae_jax.data.cars import load_cars
from iiae_jax.data.errors import missing_dataset
from iiae_jax.data.mnist import mnist_cdcb
from iiae_jax.data.offline import PALETTE, PALETTE_NAMES, colorize_pair, digits_cdcb, digits_zs
from iiae_jax.data.pix2pix import load_pix2pix
from iiae_jax.data.sampling import (ClassIndex, class_balanced_batch, class_index,
                                    epoch_batch_indices, random_flip, steps_per_epoch)
from iiae_jax.data.sketchy import load_sketchy
from iiae_jax.data.synthetic import sketchy_like
from iiae_jax.data.types import PairedData, ZeroShotData
from iiae_jax.errors import DatasetFormatError, DatasetNotFoundError


class DatasetInfo(NamedTuple):
  """What `load` knows of a dataset: its protocol, splits, folder under data_dir and loader."""
  kind: str                  # 'paired' (docs/method.md §5b, §5c) or 'zero_shot' (§5a)
  description: str
  splits: Tuple[str, ...]
  folders: Tuple[str, ...]   # candidate folders under data_dir, first one found wins; () = generated
  loader: Callable[..., Union[PairedData, ZeroShotData]]  # (split, **options), or (root, split, **options) on disk
  options: Mapping[str, Any]  # the loader's options (source 'files') and their defaults


_PAIRED_SPLITS = ("train", "valid", "test")
_PIX2PIX_OPTIONS = {"resolution": 256, "verify": True, "cache_size": 64, "num_threads": None}

DATASETS = {
    "digits_cdcb": DatasetInfo(
        "paired", "Offline MNIST-CDCB from scikit-learn's digits: coloured stroke on black / "
                  "white digit on colour.",
        _PAIRED_SPLITS, (), digits_cdcb, {"resolution": 32, "seed": 0, "copies": 8}),
    "digits_zs": DatasetInfo(
        "zero_shot", "Offline zero-shot retrieval from scikit-learn's digits: outline sketches "
                     "vs coloured textured photos, 7 seen / 3 unseen classes.",
        ("train", "test"), (), digits_zs, {"seed": 0}),
    "synthetic_sketchy": DatasetInfo(
        "zero_shot", "Random features of Sketchy's sizes, for benchmarks: split 1 (61,058 "
                     "training sketches, 100 / 25 classes) or split 2 (104 / 21 classes), 512-d.",
        ("train", "test"), (), sketchy_like, {"seed": 0, "feature_dim": 512, "sketchy_split": 1}),
    "sketchy": DatasetInfo(
        "zero_shot", "Sketchy Extended VGG features of the IIAE release.",
        ("train", "test"), ("SketchyVGG",), load_sketchy, {"sketchy_split": 1, "feature_dim": 512}),
    "mnist_cdcb": DatasetInfo(
        "paired", "MNIST-CDCB pix2pix pairs.",
        _PAIRED_SPLITS, ("mnist_cdcb", "MNIST-CDCB"), functools.partial(load_pix2pix, name="mnist_cdcb"),
        _PIX2PIX_OPTIONS),
    "mnist_cdcb_rebuilt": DatasetInfo(
        "paired", "MNIST-CDCB-like pairs made from the raw MNIST idx files with the offline "
                  "palette, for those without the release's pairs; not the paper's data.",
        _PAIRED_SPLITS, ("mnist", "MNIST"), mnist_cdcb, {"resolution": 32, "seed": 0}),
    "facades": DatasetInfo(
        "paired", "pix2pix Facades: facade photo / label map.",
        _PAIRED_SPLITS, ("facades",), functools.partial(load_pix2pix, name="facades"), _PIX2PIX_OPTIONS),
    "maps": DatasetInfo(
        "paired", "pix2pix Maps: aerial photo / map.",
        _PAIRED_SPLITS, ("maps",), functools.partial(load_pix2pix, name="maps"), _PIX2PIX_OPTIONS),
    "cars": DatasetInfo(
        "paired", "3D car renderings: azimuth-0 view / another view.",
        ("train", "test"), ("cars",), load_cars,
        {"resolution": 256, "verify": True, "max_cars_in_memory": None, "cache_size": 64,
         "num_threads": None}),
}


def load(name: str, split: str, *, data_dir: Optional[str] = None, source: str = "files",
         **options) -> Union[PairedData, ZeroShotData]:
  """One split of dataset `name` (a key of DATASETS).

  Args:
    name: 'digits_cdcb' and 'digits_zs' are generated (no data_dir needed);
      'sketchy' reads <data_dir>/SketchyVGG; 'mnist_cdcb' <data_dir>/mnist_cdcb
      (or MNIST-CDCB, the reference's name); 'mnist_cdcb_rebuilt' the MNIST idx
      files in <data_dir>/mnist; 'facades', 'maps' and 'cars' <data_dir>/<name>.
    split: 'train', 'valid' or 'test' (zero-shot sets and cars: 'train', 'test').
    data_dir: the datasets' folder; default $IIAE_DATA_DIR, else ./data.
    source: 'files' (the layouts above, read by DATASETS[name].loader) or
      'tfds' (prepared TFDS builders in data_dir, read by `tfds_builders.load_tfds`).
    **options: passed to the dataset's loader (`loader_options` lists them).

  Raises:
    ValueError: an unknown name, split or source.
    DatasetNotFoundError: the dataset's folder is missing (says what to download).
  """
  info = _info(name, source)
  if split not in info.splits:
    raise ValueError(f"dataset {name!r} has splits {list(info.splits)}, got {split!r}")
  if source == "tfds":
    from iiae_jax.data.tfds_builders import load_tfds  # pylint: disable=g-import-not-at-top
    return load_tfds(name, split, data_dir if data_dir is not None else default_data_dir(), **options)
  where = (split,) if not info.folders else (dataset_root(name, data_dir), split)
  return info.loader(*where, **options)


def load_split(data_config, split: str) -> Union[PairedData, ZeroShotData]:
  """`load` with the fields of `config.data` (a DataConfig: name, data_dir, source, options)."""
  return load(data_config.name, split, data_dir=data_config.data_dir or None, source=data_config.source,
              **dict(data_config.options))


def loader_options(name: str, source: str = "files") -> Tuple[str, ...]:
  """The options (keyword arguments) that `load(name, split, source=source, ...)` accepts.

  For 'files' the dataset's declared `DATASETS[name].options`; for 'tfds'
  `tfds_builders.options(name)` (load_tfds's own, then the builder config's).
  Raises ValueError for an unknown name or source, or a dataset with no TFDS
  builder (source 'tfds').
  """
  info = _info(name, source)
  if source == "tfds":
    from iiae_jax.data.tfds_builders import options  # pylint: disable=g-import-not-at-top
    return options(name)
  return tuple(info.options)


def default_data_dir() -> str:
  """$IIAE_DATA_DIR if set, else ./data."""
  return os.environ.get("IIAE_DATA_DIR") or "data"


def dataset_root(name: str, data_dir: Optional[str] = None) -> str:
  """The folder of on-disk dataset `name` under data_dir; DatasetNotFoundError if absent."""
  data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
  folders = DATASETS[name].folders
  for folder in folders:
    root = os.path.join(data_dir, folder)
    if os.path.isdir(root):
      return root
  raise missing_dataset(name, os.path.join(data_dir, folders[0]))


def _info(name: str, source: str) -> DatasetInfo:
  """DATASETS[name]; ValueError for an unknown name or source."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
  if source not in ("files", "tfds"):
    raise ValueError(f"source must be 'files' or 'tfds', got {source!r}")
  return DATASETS[name]


__all__ = [
    "DATASETS", "ClassIndex", "DatasetFormatError", "DatasetInfo", "DatasetNotFoundError",
    "PALETTE", "PALETTE_NAMES", "PairedData", "ZeroShotData", "class_balanced_batch",
    "class_index", "colorize_pair", "dataset_root", "default_data_dir", "digits_cdcb",
    "digits_zs", "epoch_batch_indices", "load", "load_sketchy", "load_split", "loader_options", "random_flip",
    "steps_per_epoch",
]
