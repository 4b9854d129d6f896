"""The notebooks of notebooks/ are committed with the outputs of a full run of their own code,
and run top to bottom in CI mode.

Each notebook is executed with nbclient through the `python3` kernel, from
notebooks/ as its working directory, with IIAE_NOTEBOOK_SMOKE=1 (tiny models, a few
tens of steps); any cell that raises fails the test. sketchy.ipynb runs with an
empty data folder, so it must explain the missing features and fall back to the
offline digits_zs dataset.
"""
import os
import re

import nbformat
import pytest

from tests.helpers import ROOT

NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ("quickstart", "custom_pipeline", "sketchy")
CELL_TIMEOUT_S = 300  # the slowest cell (training, with its compiles) takes about a minute on 2 CPU cores
COLAB_BADGE = "https://colab.research.google.com/github/iiae-jax/iiae_jax/blob/main/notebooks/{}.ipynb"


def read(name):
  return nbformat.read(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), as_version=4)


def execute(name, monkeypatch, env):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  for key, value in dict(env, IIAE_NOTEBOOK_SMOKE="1").items():
    monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
  notebook = read(name)
  NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                 resources={"metadata": {"path": NOTEBOOK_DIR}}).execute()
  return notebook


def outputs(notebook, output_type=None):
  return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
          if output_type is None or o.output_type == output_type]


def printed(notebook) -> str:
  return "".join(o.text for o in outputs(notebook, "stream") if o.name == "stdout")


def images(notebook):
  return [o for o in outputs(notebook, "display_data") if "image/png" in o.data]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_come_from_a_full_run_of_the_committed_code(name):
  """scripts/run_notebooks.py ran the notebook as committed: its code hash is the one recorded
  beside the outputs, every code cell ran in order, the pictures are there and small."""
  import base64
  import io
  from PIL import Image
  from scripts import run_notebooks
  notebook = read(name)
  nbformat.validate(notebook)
  recorded = notebook.metadata.get("iiae_jax", {})
  assert recorded.get("code_sha256") == run_notebooks.code_sha256(notebook), (
      f"{name}.ipynb: its code changed since its outputs were made; run "
      f"`python scripts/run_notebooks.py {name}` and commit the result")
  assert "full run" in recorded.get("run", "")
  counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
  assert counts == list(range(1, len(counts) + 1)), f"{name}.ipynb: not one run top to bottom"
  assert "SMOKE (CI) mode" not in printed(notebook)
  assert "widgets" not in notebook.metadata
  pictures = images(notebook)
  assert pictures
  for output in pictures:
    with Image.open(io.BytesIO(base64.b64decode(output.data["image/png"]))) as image:
      assert image.width <= run_notebooks.MAX_IMAGE_WIDTH
  assert os.path.getsize(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb")) < 3_000_000


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_opens_with_its_colab_badge_and_a_setup_cell(name):
  notebook = read(name)
  assert notebook.cells[0].cell_type == "markdown"
  assert COLAB_BADGE.format(name) in notebook.cells[0].source
  setup = next(cell for cell in notebook.cells if cell.cell_type == "code")
  assert "IN_COLAB" in setup.source and "IIAE_NOTEBOOK_SMOKE" in setup.source
  assert re.search(r"pip\W+install", setup.source)  # Colab installs; locally it is skipped


@pytest.mark.slow
def test_quickstart_runs_in_smoke_mode(monkeypatch):
  notebook = execute("quickstart", monkeypatch, {})
  text = printed(notebook)
  assert "SMOKE (CI) mode" in text and "step 30 reached" in text
  assert re.search(r"shared\s+[01]\.\d{3}\s+[01]\.\d{3}", text) and "exclusive" in text
  # loss curves, reconstructions, two translation grids, three analogy grids, translate(), retrieval
  assert len(images(notebook)) >= 9


@pytest.mark.slow
def test_custom_pipeline_runs_in_smoke_mode(monkeypatch):
  notebook = execute("custom_pipeline", monkeypatch, {})
  text = printed(notebook)
  for posterior in ("joint", "poe"):
    assert f"{posterior}: the weighted sum of the terms is the total at every step" in text
    assert f"== {posterior}: test loss" in text
  assert len(images(notebook)) >= 2  # every term, and the embeddings


@pytest.mark.slow
def test_sketchy_without_the_features_falls_back_to_digits_zs(monkeypatch, tmp_path):
  notebook = execute("sketchy", monkeypatch, {"IIAE_DATA_DIR": str(tmp_path)})
  text = printed(notebook)
  assert "No Sketchy features in" in text and "digits_zs" in text
  assert re.search(r"map_all\s+[01]\.\d{3}", text)
  assert len(images(notebook)) >= 1  # the retrieved photos
