"""Each dataset's options are declared (DATASETS[name].options) and the declarations agree with the
loaders that take them, so neither can drift from the other (TFDS's: tests/test_tfds_builders.py)."""
import functools
import inspect

import pytest

from iiae_jax import data
from iiae_jax.data import DATASETS


def _keyword_parameters(loader, positional: int):
  """{name: default} of `loader`'s parameters after its first `positional`, less those a partial binds."""
  bound = loader.keywords if isinstance(loader, functools.partial) else {}
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  params = [p for p in inspect.signature(loader).parameters.values() if p.kind in named]
  return {p.name: p.default for p in params[positional:] if p.name not in bound}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_declared_files_options_are_the_loaders_own_with_its_defaults(name):
  info = DATASETS[name]
  positional = 2 if info.folders else 1                # (root, split) on disk, (split) generated
  assert _keyword_parameters(info.loader, positional) == dict(info.options)
  assert list(_keyword_parameters(info.loader, positional)) == list(data.loader_options(name))


def test_a_generated_dataset_loads_with_every_declared_option_given():
  paired = data.load("digits_cdcb", "valid", **dict(DATASETS["digits_cdcb"].options, resolution=8))
  assert paired.x.shape == (180, 8, 8, 3)
  assert data.load("digits_zs", "test", **DATASETS["digits_zs"].options).num_classes == 3


def test_the_declared_option_orders_are_the_ones_configs_are_told():
  assert data.loader_options("digits_cdcb") == ("resolution", "seed", "copies")
  assert data.loader_options("facades") == ("resolution", "verify", "cache_size", "num_threads")
  assert data.loader_options("cars") == ("resolution", "verify", "max_cars_in_memory", "cache_size",
                                         "num_threads")
