"""Test session setup: one persistent XLA compilation cache for every test and subprocess, and the
order in which the two CI workers (`pytest -n 2`, pyproject's `--dist loadgroup`) take the tests.

The tests train the same tiny models in many places (in-process and through
train.py/eval.py subprocesses); compiling each program once and reusing it
from the cache keeps the suite within CI's time on a 2-core CPU.
"""
import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "iiae_jax_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# A loaded host slows the drawing of examples; that must not fail a property test.
settings.register_profile("iiae_jax", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("iiae_jax")


def _unit(item) -> str:
  """What one worker runs as a whole: a test, or every test of a module that shares one of the
  module's fixtures of module scope (computed once, on that worker)."""
  for name in item.fixturenames:
    definitions = getattr(item, "_fixtureinfo").name2fixturedefs.get(name, ())
    if definitions and definitions[-1].scope == "module":
      return item.module.__name__
  return item.nodeid


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(items):
  """Slow units first, the one with the most slow tests leading (so the two workers end together);
  tests that load TensorFlow into the process last (others pin that the package never does)."""
  units, order = {}, {}
  for index, item in enumerate(items):
    unit = _unit(item)
    if unit != item.nodeid:
      item.add_marker(pytest.mark.xdist_group(unit))
    units.setdefault(unit, []).append(item)
    order.setdefault(unit, index)

  def rank(unit):
    members = units[unit]
    slow = sum(item.get_closest_marker("slow") is not None for item in members)
    tensorflow = any(item.get_closest_marker("tensorflow") is not None for item in members)
    return tensorflow, -slow, order[unit]
  items[:] = [item for unit in sorted(units, key=rank) for item in units[unit]]
