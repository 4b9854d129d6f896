"""Every TFDS builder builds (array_record) from tiny local files and reads back equal to its direct loader.

Nothing is downloaded and TensorFlow is never imported.
"""
import inspect
import json
import os
import sys
import tarfile
import warnings

import numpy as np
import pytest
import tensorflow_datasets as tfds

from iiae_jax.data import DATASETS
from iiae_jax.data import cars as cars_lib
from iiae_jax.data import mnist
from iiae_jax.data import offline
from iiae_jax.data import pix2pix
from iiae_jax.data import tfds_builders as T
from iiae_jax.errors import DatasetFormatError, DatasetNotFoundError
from tests.test_data_cars import SIZE as CAR_SIZE, write_cars
from tests.test_data_mnist import write_fake_mnist
from tests.test_data_pix2pix import write_pix2pix

pytestmark = pytest.mark.filterwarnings("ignore")
tfds.disable_progress_bar()

QUANTUM = 1.0 / 127.5  # one uint8 step in [-1, 1]


@pytest.fixture(autouse=True)
def no_tensorflow():
  """Each builder test must leave TensorFlow unimported."""
  yield
  assert "tensorflow" not in sys.modules


def _arrays(data):
  return np.asarray(data.x), np.asarray(data.y)


# ---------------------------------------------------------------------------
# Generated datasets.


def test_digits_cdcb_reads_back_within_quantisation(tmp_path):
  T.prepare("digits_cdcb", str(tmp_path), resolution=16, max_examples=6)
  for split in ("train", "valid", "test"):
    built = T.load_tfds("digits_cdcb", split, str(tmp_path), resolution=16, max_examples=6)
    direct = offline.digits_cdcb(split, resolution=16)
    assert built.name == "digits_cdcb" and len(built) == 6 and built.x.shape == (6, 16, 16, 3)
    x, y = _arrays(built)
    np.testing.assert_allclose(x, direct.x[:6], atol=0.5 * QUANTUM + 1e-6)
    np.testing.assert_allclose(y, direct.y[:6], atol=0.5 * QUANTUM + 1e-6)
    for k in ("digit", "x_color", "y_color", "image"):
      np.testing.assert_array_equal(built.factors[k], direct.factors[k][:6])
    assert built.factor_names["x_color"] == offline.PALETTE_NAMES
  # The same records through plain tfds.data_source.
  config = T.make_config("digits_cdcb", resolution=16, max_examples=6)
  source = tfds.data_source("digits_cdcb", split="test", data_dir=str(tmp_path), download=False,
                            builder_kwargs={"config": config})
  record = source[4]
  assert len(source) == 6 and record["x"].shape == (16, 16, 3) and record["x"].dtype == np.uint8
  assert record["digit"] == offline.digits_cdcb("test").factors["digit"][4]


def test_digits_zs_reads_back_equal(tmp_path):
  T.prepare("digits_zs", str(tmp_path), max_examples=5)
  for split in ("train", "test"):
    built = T.load_tfds("digits_zs", split, str(tmp_path), max_examples=5)
    direct = offline.digits_zs(split)
    assert built.classes == direct.classes and built.sketch.shape == (5, direct.sketch.shape[1])
    np.testing.assert_array_equal(np.asarray(built.sketch), direct.sketch[:5])
    np.testing.assert_array_equal(built.photo[[4, 0]], direct.photo[[4, 0]])
    np.testing.assert_array_equal(built.sketch_labels, direct.sketch_labels[:5])
    np.testing.assert_array_equal(built.photo_labels, direct.photo_labels[:5])
    np.testing.assert_array_equal(built.photo_paths, direct.photo_paths[:5])


@pytest.mark.parametrize("name,options", [
    ("digits_zs", {}), ("digits_cdcb", dict(resolution=32)), ("mnist_cdcb_rebuilt", {}), ("sketchy_vgg", {}),
    ("sketchy_vgg", dict(sketchy_split=2))])
def test_options_of_a_registered_config_select_that_config(tmp_path, name, options):
  """tfds refuses a new config object named like a registered one, so the shipped configs'
  options (the defaults, Sketchy split 2) must give the registered object itself."""
  config = T.make_config(name, **options)
  assert any(config is c for c in T.builder_class(name).BUILDER_CONFIGS)
  assert T.builder(name, str(tmp_path), **options).builder_config is config


def test_the_shipped_digits_zs_config_reads_through_tfds(tmp_path):
  """`--config.data.source=tfds` with configs/digits_zs.py: default options, the full dataset."""
  from configs import digits_zs
  from iiae_jax import data
  config = digits_zs.get_config()
  T.prepare("digits_zs", str(tmp_path), **config.data.options)
  for split in ("train", "test"):
    built = data.load("digits_zs", split, data_dir=str(tmp_path), source="tfds", **config.data.options)
    direct = offline.digits_zs(split)
    np.testing.assert_array_equal(np.asarray(built.sketch), direct.sketch)
    np.testing.assert_array_equal(np.asarray(built.photo), direct.photo)
    np.testing.assert_array_equal(built.photo_labels, direct.photo_labels)


def test_load_tfds_refuses_unprepared_data_unless_asked(tmp_path):
  with pytest.raises(DatasetNotFoundError, match="not prepared"):
    T.load_tfds("digits_zs", "train", str(tmp_path), max_examples=3)
  data = T.load_tfds("digits_zs", "train", str(tmp_path), max_examples=3, download_and_prepare=True)
  assert len(data.sketch_labels) == 3
  with pytest.raises(TypeError, match="unknown options"):
    T.load_tfds("digits_zs", "train", str(tmp_path), colour="red")


# ---------------------------------------------------------------------------
# MNIST-CDCB from idx files.


def test_mnist_cdcb_rebuilt_loads_by_name_from_files_and_through_tfds(tmp_path):
  """Usable as data.name (configs) from the idx files in <data_dir>/mnist, or prepared."""
  from iiae_jax import data
  mnist_dir = write_fake_mnist(str(tmp_path / "mnist"))
  direct = mnist.mnist_cdcb(mnist_dir, "valid", resolution=8, seed=2)
  loaded = data.load("mnist_cdcb_rebuilt", "valid", data_dir=str(tmp_path), resolution=8, seed=2)
  np.testing.assert_array_equal(loaded.x, direct.x)
  np.testing.assert_array_equal(loaded.factors["digit"], direct.factors["digit"])
  assert set(data.loader_options("mnist_cdcb_rebuilt")) == {"resolution", "seed"}
  T.prepare("mnist_cdcb_rebuilt", str(tmp_path / "tfds"), manual_dir=mnist_dir, resolution=8, seed=2)
  built = data.load("mnist_cdcb_rebuilt", "valid", data_dir=str(tmp_path / "tfds"), source="tfds",
                    resolution=8, seed=2)
  np.testing.assert_allclose(np.asarray(built.y), direct.y, atol=0.5 * QUANTUM + 1e-6)
  with pytest.raises(DatasetNotFoundError, match="mnist_cdcb_rebuilt"):   # the old name's data
    data.load("mnist_cdcb", "valid", data_dir=str(tmp_path / "tfds"), source="tfds")


def test_mnist_cdcb_rebuilt_builder_reads_back_within_quantisation(tmp_path):
  mnist_dir = write_fake_mnist(str(tmp_path / "mnist"))
  data_dir = str(tmp_path / "tfds")
  T.prepare("mnist_cdcb_rebuilt", data_dir, manual_dir=mnist_dir, resolution=8, seed=1)
  for split in ("train", "valid", "test"):
    built = T.load_tfds("mnist_cdcb_rebuilt", split, data_dir, resolution=8, seed=1)
    direct = mnist.mnist_cdcb(mnist_dir, split, resolution=8, seed=1)
    assert len(built) == len(direct) and built.x.shape[1:] == (8, 8, 3)
    np.testing.assert_allclose(np.asarray(built.x), np.asarray(direct.x), atol=0.5 * QUANTUM + 1e-6)
    np.testing.assert_allclose(np.asarray(built.y), np.asarray(direct.y), atol=0.5 * QUANTUM + 1e-6)
    for k in ("digit", "x_color", "y_color", "image"):
      np.testing.assert_array_equal(built.factors[k], direct.factors[k])


# ---------------------------------------------------------------------------
# pix2pix, Cars, Sketchy: manual files.


def test_mnist_cdcb_through_tfds_is_the_release_pairs_as_the_files_loader_reads_them(tmp_path):
  """`--config.data.source=tfds` must not swap datasets: `mnist_cdcb` is the release's pair
  files (X on the right), equal to `load('mnist_cdcb')`; the MNIST rebuild has its own name."""
  from iiae_jax import data
  manual = tmp_path / "data" / "mnist_cdcb"
  write_pix2pix(manual, count=3, size=16)
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(DatasetNotFoundError, match="manual_dir"):
    T.prepare("mnist_cdcb", data_dir)                      # nothing to download it from
  T.prepare("mnist_cdcb", data_dir, manual_dir=str(manual))
  for split in ("train", "valid", "test"):
    built = data.load("mnist_cdcb", split, data_dir=data_dir, source="tfds", resolution=8)
    direct = data.load("mnist_cdcb", split, data_dir=str(tmp_path / "data"), resolution=8)
    bx, by = _arrays(built)
    dx, dy = _arrays(direct)
    np.testing.assert_array_equal(bx, dx)
    np.testing.assert_array_equal(by, dy)
    assert not np.array_equal(bx, by)


def test_facades_from_manual_folder_equals_load_pix2pix(tmp_path):
  manual = tmp_path / "manual"
  write_pix2pix(manual / "facades", count=3, size=16, ext="jpg")
  data_dir = str(tmp_path / "tfds")
  T.prepare("facades", data_dir, manual_dir=str(manual))
  for split in ("train", "valid", "test"):
    built = T.load_tfds("facades", split, data_dir, resolution=8)
    direct = pix2pix.load_pix2pix(str(manual / "facades"), split, resolution=8, name="facades")
    bx, by = _arrays(built)
    dx, dy = _arrays(direct)
    np.testing.assert_array_equal(bx, dx)  # the original JPEG bytes, decoded alike
    np.testing.assert_array_equal(by, dy)
    assert built.x.paths == [os.path.basename(p) for p in direct.x.paths]
  source = tfds.data_source("facades", split="train", data_dir=data_dir, download=False)
  assert len(source) == 3 and source[0]["image"].shape == (16, 32, 3)


def test_maps_from_manual_tarball_without_test_folder(tmp_path):
  tree = tmp_path / "tree"
  write_pix2pix(tree / "maps", splits=("train", "val"), count=2, size=8)
  manual = tmp_path / "manual"
  manual.mkdir()
  with tarfile.open(manual / "maps.tar.gz", "w:gz") as tar:
    tar.add(tree / "maps", arcname="maps")
  data_dir = str(tmp_path / "tfds")
  T.prepare("maps", data_dir, manual_dir=str(manual))
  for split in ("train", "valid", "test"):  # test = the release's val/, valid = training pairs
    built = T.load_tfds("maps", split, data_dir, resolution=8)
    direct = pix2pix.load_pix2pix(str(tree / "maps"), split, resolution=8, name="maps")
    np.testing.assert_array_equal(np.asarray(built.y), np.asarray(direct.y))


def test_pix2pix_builder_rejects_truncated_file_by_name(tmp_path):
  manual = tmp_path / "manual"
  paths = write_pix2pix(manual, splits=("train",), count=2, size=16, ext="png")["train"]
  with open(paths[1], "rb") as f:
    data = f.read()
  with open(paths[1], "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(DatasetFormatError, match=os.path.basename(paths[1])):
    T.prepare("facades", str(tmp_path / "tfds"), manual_dir=str(manual))


def test_cars_builder_pairs_views_like_load_cars(tmp_path):
  manual = write_cars(tmp_path / "manual", numbers=(1, 2, 192))
  data_dir = str(tmp_path / "tfds")
  T.prepare("cars", data_dir, manual_dir=str(manual))
  for split in ("train", "test"):
    built = T.load_tfds("cars", split, data_dir, resolution=CAR_SIZE)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      direct = cars_lib.load_cars(str(manual), split, resolution=CAR_SIZE)
    assert len(built) == len(direct)
    for k in ("car", "elevation", "azimuth"):
      np.testing.assert_array_equal(built.factors[k], direct.factors[k])
    idx = np.array([0, 22, 23, len(direct) - 1])
    np.testing.assert_array_equal(built.x[idx], direct.x[idx])
    np.testing.assert_array_equal(built.y[idx], direct.y[idx])
  source = tfds.data_source("cars", split="train", data_dir=data_dir, download=False)
  assert len(source) == 2 * 96 and int(source[96 + 24 + 5]["azimuth"]) == 5


def test_cars_builder_needs_manual_dir(tmp_path):
  with pytest.raises(DatasetNotFoundError, match="car_NNN_mesh.mat"):
    T.prepare("cars", str(tmp_path / "tfds"))


def write_sketchy(root, dim=8):
  """<root>/SketchyVGG/split1/ with 3 train and 2 test classes."""
  directory = os.path.join(root, "SketchyVGG", "split1")
  os.makedirs(directory)
  rng = np.random.default_rng(0)
  for part, classes in (("train", ["cat", "airplane", "zebra"]), ("test", ["bear", "tree"])):
    for domain, per_class in (("sketch", 3), ("image", 2)):
      paths = np.array([f"{c}/{c}_{i}.png" for i in range(per_class) for c in classes])
      np.save(os.path.join(directory, f"{part}_{domain}_features.npy"), rng.random((len(paths), dim)))
      np.save(os.path.join(directory, f"{part}_{domain}_paths.npy"), paths)
  return os.path.join(root, "SketchyVGG")


def test_sketchy_vgg_reads_back_equal_to_load_sketchy(tmp_path):
  from iiae_jax.data.sketchy import load_sketchy  # pylint: disable=g-import-not-at-top
  root = write_sketchy(str(tmp_path / "manual"))
  data_dir = str(tmp_path / "tfds")
  T.prepare("sketchy_vgg", data_dir, manual_dir=str(tmp_path / "manual"), feature_dim=8)
  for split in ("train", "test"):
    built = T.load_tfds("sketchy", split, data_dir, feature_dim=8)
    direct = load_sketchy(root, split, feature_dim=8)
    assert built.name == direct.name and built.classes == direct.classes
    np.testing.assert_array_equal(np.asarray(built.sketch), direct.sketch)
    np.testing.assert_array_equal(np.asarray(built.photo), direct.photo)
    np.testing.assert_array_equal(built.sketch_labels, direct.sketch_labels)
    np.testing.assert_array_equal(built.photo_labels, direct.photo_labels)
    np.testing.assert_array_equal(built.sketch_paths, direct.sketch_paths)


def test_data_load_reads_tfds_source(tmp_path):
  from iiae_jax import data  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  write_pix2pix(manual, count=2, size=8)
  T.prepare("facades", str(tmp_path), manual_dir=str(manual))
  loaded = data.load("facades", "test", data_dir=str(tmp_path), source="tfds", resolution=8)
  direct = pix2pix.load_pix2pix(str(manual), "test", resolution=8)
  np.testing.assert_array_equal(loaded.x[[1, 0]], direct.x[[1, 0]])


def test_grain_batches_a_data_source(tmp_path):
  grain = pytest.importorskip("grain")
  T.prepare("digits_zs", str(tmp_path), max_examples=4)
  source = tfds.data_source("digits_zs", split="test", data_dir=str(tmp_path), download=False,
                            builder_kwargs={"config": T.make_config("digits_zs", max_examples=4)})
  batches = list(grain.MapDataset.source(source).map(lambda r: r["label"]).batch(4))
  assert len(batches) == 2 and len(batches[0]) == 4


# ---------------------------------------------------------------------------
# Declared options.


def test_load_tfds_declares_its_own_options_with_their_defaults():
  signature = inspect.signature(T.load_tfds)
  own = {p.name: p.default for p in signature.parameters.values() if p.kind == inspect.Parameter.KEYWORD_ONLY}
  assert own == T.LOAD_OPTIONS


@pytest.mark.parametrize("name", sorted(T.BUILDERS))
def test_every_tfds_option_is_accepted_by_load_tfds_or_the_builder_config(tmp_path, name):
  cls = T.builder_class(name)
  defaults = cls.config_defaults()
  config = cls.make_config(**defaults)                 # every config option at once is accepted
  assert config is None or all(getattr(config, k) == v for k, v in defaults.items())
  options = T.options(name)
  assert options[:len(T.LOAD_OPTIONS)] == tuple(T.LOAD_OPTIONS)
  assert set(options) == set(T.LOAD_OPTIONS) | set(defaults)
  with pytest.raises(DatasetNotFoundError, match="not prepared"):  # not a TypeError: each option is taken
    T.load_tfds(name, "train", str(tmp_path), **{**T.LOAD_OPTIONS, **defaults})


@pytest.mark.parametrize("name", ["digits_cdcb", "digits_zs", "mnist_cdcb_rebuilt", "sketchy"])
def test_a_tfds_config_defaults_to_what_the_files_loader_does(name):
  """A config's options select what the files loader would read with the same values."""
  files = DATASETS[name].options
  shared = {k: v for k, v in T.builder_class(name).config_defaults().items() if k in files}
  assert shared and all(files[k] == v for k, v in shared.items())


# ---------------------------------------------------------------------------
# Labels from the metadata are checked on read.


def _edit_metadata(dataset, edit):
  path = os.path.join(dataset.data_dir, "metadata.json")
  with open(path) as f:
    meta = json.load(f)
  edit(meta["splits"])
  with open(path, "w") as f:
    json.dump(meta, f)


def test_a_label_outside_the_classes_in_the_metadata_is_refused_on_read(tmp_path):
  dataset = T.prepare("digits_zs", str(tmp_path), max_examples=5)
  _edit_metadata(dataset, lambda splits: splits["train"]["sketch_labels"].__setitem__(2, 7))
  with pytest.raises(DatasetFormatError, match=r"digits_zs/train sketch_labels: label 7 at item 2 is "
                                               r"not a class index in \[0, 7\)"):
    T.load_tfds("digits_zs", "train", str(tmp_path), max_examples=5)
  assert T.load_tfds("digits_zs", "test", str(tmp_path), max_examples=5).num_classes == 3


def test_a_factor_outside_its_names_in_the_metadata_is_refused_on_read(tmp_path):
  dataset = T.prepare("digits_cdcb", str(tmp_path), resolution=8, max_examples=4)
  _edit_metadata(dataset, lambda splits: splits["valid"]["factors"]["y_color"].__setitem__(3, 10))
  with pytest.raises(DatasetFormatError, match=r"digits_cdcb/valid factor 'y_color': label 10 at item 3"):
    T.load_tfds("digits_cdcb", "valid", str(tmp_path), resolution=8, max_examples=4)
