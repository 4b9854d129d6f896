"""`iiae_jax.data.load`: one entry point for every dataset."""
import functools
import os
import re
import sys
import types

import numpy as np
import pytest

from iiae_jax import data
from iiae_jax.data import DATASETS, DatasetNotFoundError, PairedData, ZeroShotData
from iiae_jax.data import cars, pix2pix


def test_datasets_lists_every_name_with_its_kind():
  assert set(DATASETS) == {"digits_cdcb", "digits_zs", "sketchy", "mnist_cdcb", "mnist_cdcb_rebuilt",
                           "facades", "maps", "cars", "synthetic_sketchy"}
  for name, info in DATASETS.items():
    assert info.kind in ("paired", "zero_shot") and info.description
  assert (DATASETS["sketchy"].kind == DATASETS["digits_zs"].kind
          == DATASETS["synthetic_sketchy"].kind == "zero_shot")
  assert DATASETS["digits_cdcb"].kind == DATASETS["facades"].kind == "paired"


def test_generated_sets_need_no_data_dir_and_take_options(tmp_path, monkeypatch):
  monkeypatch.setenv("IIAE_DATA_DIR", str(tmp_path / "nowhere"))
  paired = data.load("digits_cdcb", "valid", resolution=16, seed=3)
  assert isinstance(paired, PairedData) and paired.x.shape == (180, 16, 16, 3)
  direct = data.digits_cdcb("valid", resolution=16, seed=3)
  np.testing.assert_array_equal(paired.batch(np.arange(9))["y"], direct.batch(np.arange(9))["y"])
  zs = data.load("digits_zs", "test", seed=1)
  assert isinstance(zs, ZeroShotData) and zs.num_classes == 3


@pytest.mark.parametrize("name", ["mnist", "sketchy_vgg", ""])
def test_unknown_name_lists_the_known_ones(name):
  with pytest.raises(ValueError) as err:
    data.load(name, "train")
  for known in DATASETS:
    assert known in str(err.value)


@pytest.mark.parametrize("name,split", [("digits_cdcb", "val"), ("sketchy", "valid"),
                                        ("digits_zs", "valid"), ("facades", "training")])
def test_unknown_split_is_rejected(name, split, tmp_path):
  with pytest.raises(ValueError, match=split):
    data.load(name, split, data_dir=str(tmp_path))


def test_unknown_source_is_rejected():
  with pytest.raises(ValueError, match="source"):
    data.load("digits_cdcb", "train", source="hdf5")


@pytest.mark.parametrize("name,folder,hint", [
    ("sketchy", "SketchyVGG", "10.5281/zenodo.3890097"),
    ("mnist_cdcb", "mnist_cdcb", "github.com/agonzgarc/cross-domain-disen"),
    ("mnist_cdcb_rebuilt", "mnist", "storage.googleapis.com/cvdf-datasets/mnist"),
    ("facades", "facades", "efrosgans.eecs.berkeley.edu/pix2pix/datasets/facades.tar.gz"),
    ("maps", "maps", "efrosgans.eecs.berkeley.edu/pix2pix/datasets/maps.tar.gz"),
    ("cars", "cars", "10.5281/zenodo.3890097"),
])
def test_missing_dataset_says_what_to_download_and_where(tmp_path, name, folder, hint):
  with pytest.raises(DatasetNotFoundError) as err:
    data.load(name, "train", data_dir=str(tmp_path))
  assert isinstance(err.value, FileNotFoundError)
  assert hint in str(err.value) and os.path.join(str(tmp_path), folder) in str(err.value)


def test_data_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
  monkeypatch.setenv("IIAE_DATA_DIR", str(tmp_path))
  with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path))):
    data.load("facades", "train")
  monkeypatch.delenv("IIAE_DATA_DIR")
  assert data.default_data_dir() == "data"


def _fake_module(monkeypatch, name, function):
  calls = []
  module = types.ModuleType(name)
  setattr(module, function, lambda *args, **kwargs: calls.append((args, kwargs)) or "loaded")
  monkeypatch.setitem(sys.modules, name, module)
  return calls


def _fake_loader(monkeypatch, name):
  """Swaps the loader of DATASETS[name] for one that records its calls; keeps what the registry
  binds to it (e.g. a pix2pix set's name). Returns (the real loader function, the calls)."""
  calls = []
  real = DATASETS[name].loader
  func, bound = (real.func, real.keywords) if isinstance(real, functools.partial) else (real, {})
  fake = lambda *args, **kwargs: calls.append((args, kwargs)) or "loaded"
  monkeypatch.setitem(DATASETS, name, DATASETS[name]._replace(loader=functools.partial(fake, **bound)))
  return func, calls


@pytest.mark.parametrize("name,folder", [("facades", "facades"), ("maps", "maps"),
                                         ("mnist_cdcb", "mnist_cdcb"),
                                         ("mnist_cdcb", "MNIST-CDCB")])
def test_pix2pix_sets_go_to_load_pix2pix_with_their_folder(tmp_path, monkeypatch, name, folder):
  loader, calls = _fake_loader(monkeypatch, name)
  assert loader is pix2pix.load_pix2pix
  (tmp_path / folder).mkdir()
  assert data.load(name, "valid", data_dir=str(tmp_path), resolution=64) == "loaded"
  assert calls == [((str(tmp_path / folder), "valid"), {"name": name, "resolution": 64})]


def test_cars_go_to_load_cars(tmp_path, monkeypatch):
  loader, calls = _fake_loader(monkeypatch, "cars")
  assert loader is cars.load_cars
  (tmp_path / "cars").mkdir()
  data.load("cars", "test", data_dir=str(tmp_path), resolution=32)
  assert calls == [((str(tmp_path / "cars"), "test"), {"resolution": 32})]


def test_tfds_source_goes_to_load_tfds(tmp_path, monkeypatch):
  calls = _fake_module(monkeypatch, "iiae_jax.data.tfds_builders", "load_tfds")
  data.load("digits_cdcb", "valid", data_dir=str(tmp_path), source="tfds", resolution=32)
  assert calls == [(("digits_cdcb", "valid", str(tmp_path)), {"resolution": 32})]
