"""The package outside the checkout: a wheel installed into a fresh virtual environment runs the
README's custom-loop snippet, with the paper's recipes from `iiae_jax.recipes`."""
import os
import shutil
import sys

import pytest

from tests import helpers
from tests.helpers import ROOT
from tests.test_readme import _block_after


@pytest.mark.slow
def test_the_installed_wheel_runs_the_readme_custom_loop_outside_the_checkout(tmp_path):
  source = tmp_path / "source"   # built from a copy: the build leaves nothing in the checkout
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), source / name)
  shutil.copytree(os.path.join(ROOT, "iiae_jax"), source / "iiae_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  run = lambda *cmd, **kw: helpers.run(cmd, **kw)
  built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
              "-w", str(tmp_path / "dist"), str(source))
  assert built.returncode == 0, built.stderr[-3000:]
  (wheel,) = (tmp_path / "dist").glob("iiae_jax-*.whl")
  venv = tmp_path / "venv"
  # The dependencies (jax, flax, ...) come from this interpreter's site-packages; iiae_jax itself
  # only from the wheel.
  made = run(sys.executable, "-m", "venv", "--system-site-packages", str(venv))
  assert made.returncode == 0, made.stderr[-3000:]
  python = str(venv / "bin" / "python")
  installed = run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel))
  assert installed.returncode == 0, installed.stderr[-3000:]
  snippet = _block_after("<!-- snippet: custom-loop -->").replace("range(200)", "range(3)")
  assert "range(3)" in snippet
  (tmp_path / "elsewhere").mkdir()
  check = ("import importlib.util, iiae_jax\n"
           "print('iiae_jax from', iiae_jax.__file__)\n"
           "print('configs importable:', importlib.util.find_spec('configs') is not None)\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  out = run(python, "-c", check + snippet, cwd=str(tmp_path / "elsewhere"), env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"iiae_jax from {venv}" in out.stdout and "configs importable: False" in out.stdout
  assert "loss " in out.stdout and "kl_zs_rx" in out.stdout
