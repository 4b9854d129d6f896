"""Datasets of the paper and the offline ones, behind one `load(name, split)`.

    from iiae_jax import data
    train = data.load("digits_cdcb", "train")                 # generated, no download
    test = data.load("sketchy", "test", data_dir="/datasets")  # <data_dir>/SketchyVGG/split1/...

`load` returns a `PairedData` (instance-level image pairs) or a `ZeroShotData`
(class-level sketch/photo features); `DATASETS` lists every name and
`loader_options(name, source)` the options its loader takes.
"""
import inspect
import os
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

from iiae_jax.data.errors import missing_dataset
from iiae_jax.errors import DatasetFormatError, DatasetNotFoundError
from iiae_jax.data.offline import PALETTE, PALETTE_NAMES, colorize_pair, digits_cdcb, digits_zs
from iiae_jax.data.sampling import (ClassIndex, class_balanced_batch, class_index,
                                    epoch_batch_indices, random_flip, steps_per_epoch)
from iiae_jax.data.sketchy import load_sketchy
from iiae_jax.data.types import PairedData, ZeroShotData


class DatasetInfo(NamedTuple):
  """What `load` knows of a dataset: its protocol, splits and folder under data_dir."""
  kind: str                  # 'paired' (SPEC §5b/5c) or 'zero_shot' (SPEC §5a)
  description: str
  splits: Tuple[str, ...]
  folders: Tuple[str, ...]   # candidate folders under data_dir, first one found wins; () = generated


_PAIRED_SPLITS = ("train", "valid", "test")

DATASETS = {
    "digits_cdcb": DatasetInfo(
        "paired", "Offline MNIST-CDCB from scikit-learn's digits: coloured stroke on black / "
                  "white digit on colour (options: resolution, seed, copies).",
        _PAIRED_SPLITS, ()),
    "digits_zs": DatasetInfo(
        "zero_shot", "Offline zero-shot retrieval from scikit-learn's digits: outline sketches "
                     "vs coloured textured photos, 7 seen / 3 unseen classes (option: seed).",
        ("train", "test"), ()),
    "synthetic_sketchy": DatasetInfo(
        "zero_shot", "Random features of Sketchy's sizes, for benchmarks: split 1 (61,058 "
                     "training sketches, 100 / 25 classes) or split 2 (104 / 21 classes), 512-d "
                     "(options: sketchy_split, seed, feature_dim).",
        ("train", "test"), ()),
    "sketchy": DatasetInfo(
        "zero_shot", "Sketchy Extended VGG features of the IIAE release "
                     "(options: sketchy_split, feature_dim).",
        ("train", "test"), ("SketchyVGG",)),
    "mnist_cdcb": DatasetInfo(
        "paired", "MNIST-CDCB pix2pix pairs (option: resolution).",
        _PAIRED_SPLITS, ("mnist_cdcb", "MNIST-CDCB")),
    "mnist_cdcb_rebuilt": DatasetInfo(
        "paired", "MNIST-CDCB-like pairs made from the raw MNIST idx files with the offline "
                  "palette, for those without the release's pairs; not the paper's data "
                  "(options: resolution, seed).",
        _PAIRED_SPLITS, ("mnist", "MNIST")),
    "facades": DatasetInfo(
        "paired", "pix2pix Facades: facade photo / label map (option: resolution).",
        _PAIRED_SPLITS, ("facades",)),
    "maps": DatasetInfo(
        "paired", "pix2pix Maps: aerial photo / map (option: resolution).",
        _PAIRED_SPLITS, ("maps",)),
    "cars": DatasetInfo(
        "paired", "3D car renderings: azimuth-0 view / another view (option: resolution).",
        ("train", "test"), ("cars",)),
}


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
    source: 'files' (the layouts above) or 'tfds' (prepared TFDS builders in
      data_dir, read by `tfds_builders.load_tfds`).
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
  loader, fixed = _files_loader(name)
  where = (split,) if not info.folders else (dataset_root(name, data_dir), split)
  return loader(*where, **fixed, **options)


def load_split(data_config, split: str) -> Union[PairedData, ZeroShotData]:
  """`load` with the fields of `config.data` (a DataConfig: name, data_dir, source, options)."""
  return load(data_config.name, split, data_dir=data_config.data_dir or None, source=data_config.source,
              **dict(data_config.options))


def _info(name: str, source: str) -> DatasetInfo:
  """DATASETS[name]; ValueError for an unknown name or source."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
  if source not in ("files", "tfds"):
    raise ValueError(f"source must be 'files' or 'tfds', got {source!r}")
  return DATASETS[name]


def _files_loader(name: str) -> Tuple[Callable[..., Any], Dict[str, Any]]:
  """The loader of `name` for source 'files', and the keyword arguments `load` gives it itself.

  Generated datasets' loaders take (split, **options), on-disk ones (root, split, **options).
  """
  if name == "digits_cdcb":
    return digits_cdcb, {}
  if name == "digits_zs":
    return digits_zs, {}
  if name == "synthetic_sketchy":
    from iiae_jax.data.synthetic import sketchy_like  # pylint: disable=g-import-not-at-top
    return sketchy_like, {}
  if name == "sketchy":
    return load_sketchy, {}
  if name == "cars":
    from iiae_jax.data.cars import load_cars  # pylint: disable=g-import-not-at-top
    return load_cars, {}
  if name == "mnist_cdcb_rebuilt":
    from iiae_jax.data.tfds_builders import mnist_cdcb  # pylint: disable=g-import-not-at-top
    return mnist_cdcb, {}
  from iiae_jax.data.pix2pix import load_pix2pix  # pylint: disable=g-import-not-at-top
  return load_pix2pix, {"name": name}


def _keywords(fn: Callable[..., Any], skip: int = 0, given=()) -> Tuple[str, ...]:
  """The named parameters of `fn` after its first `skip`, less those in `given`."""
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  params = [p for p in inspect.signature(fn).parameters.values() if p.kind in named]
  return tuple(p.name for p in params[skip:] if p.name not in given)


def loader_options(name: str, source: str = "files") -> Tuple[str, ...]:
  """The options (keyword arguments) that `load(name, split, source=source, ...)` accepts.

  Read from the loaders' signatures: for 'files' the dataset's own loader, for
  'tfds' `tfds_builders.load_tfds` and the options of the dataset's builder
  config. Raises ValueError for an unknown name or source, or a dataset with
  no TFDS builder (source 'tfds').
  """
  info = _info(name, source)
  if source == "tfds":
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from iiae_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
    config_class = tfds_builders.builder_class(name).CONFIG_CLASS  # its fields are options too
    config_options = () if config_class is None else _keywords(
        config_class, given=_keywords(tfds.core.BuilderConfig))
    return tuple(dict.fromkeys(_keywords(tfds_builders.load_tfds, skip=3) + config_options))
  loader, fixed = _files_loader(name)
  return _keywords(loader, skip=1 if not info.folders else 2, given=fixed)


__all__ = [
    "DATASETS", "ClassIndex", "DatasetFormatError", "DatasetInfo", "DatasetNotFoundError",
    "PALETTE", "PALETTE_NAMES", "PairedData", "ZeroShotData", "class_balanced_batch",
    "class_index", "colorize_pair", "dataset_root", "default_data_dir", "digits_cdcb",
    "digits_zs", "epoch_batch_indices", "load", "load_sketchy", "load_split", "loader_options", "random_flip",
    "steps_per_epoch",
]
