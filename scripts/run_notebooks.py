"""Runs the notebooks in full on this machine and keeps their outputs, small enough to review.

  python scripts/run_notebooks.py                   # every notebook of notebooks/
  python scripts/run_notebooks.py quickstart        # one

Each notebook runs top to bottom with nbclient (the full run, not CI's smoke
mode), from notebooks/ as its working directory. Its images are then shrunk
(at most MAX_IMAGE_WIDTH pixels wide), widget state is dropped, and its
metadata records the hash of its code cells (`code_sha256`), the date and the
machine, so that tests/test_notebooks.py can tell that the committed outputs
came from the committed code.
"""
import argparse
import base64
import datetime
import hashlib
import io
import os
import platform
import time

import nbformat
from nbclient import NotebookClient
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ("quickstart", "custom_pipeline", "sketchy")
MAX_IMAGE_WIDTH = 720
CELL_TIMEOUT_S = 1800


def code_sha256(notebook) -> str:
  """The hash of a notebook's code cells, in order (what its outputs depend on)."""
  digest = hashlib.sha256()
  for cell in notebook.cells:
    if cell.cell_type == "code":
      digest.update(cell.source.encode())
      digest.update(b"\0")
  return digest.hexdigest()


def _shrink_png(data: str) -> str:
  with Image.open(io.BytesIO(base64.b64decode(data))) as image:
    image.load()
    if image.width > MAX_IMAGE_WIDTH:
      height = round(image.height * MAX_IMAGE_WIDTH / image.width)
      image = image.resize((MAX_IMAGE_WIDTH, height), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
  return base64.b64encode(out.getvalue()).decode()


def tidy(notebook) -> None:
  """Shrinks the images of the outputs and drops what does not belong in a review."""
  notebook.metadata.pop("widgets", None)
  for cell in notebook.cells:
    cell.metadata.pop("execution", None)
    for output in cell.get("outputs", []):
      data = output.get("data", {})
      if "image/png" in data:
        data["image/png"] = _shrink_png(data["image/png"])
      data.pop("application/vnd.jupyter.widget-view+json", None)


def run(name: str) -> float:
  path = os.path.join(NOTEBOOK_DIR, f"{name}.ipynb")
  notebook = nbformat.read(path, as_version=4)
  env_smoke = os.environ.pop("IIAE_NOTEBOOK_SMOKE", None)   # the full run
  started = time.perf_counter()
  try:
    NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                   resources={"metadata": {"path": NOTEBOOK_DIR}}).execute()
  finally:
    if env_smoke is not None:
      os.environ["IIAE_NOTEBOOK_SMOKE"] = env_smoke
  seconds = time.perf_counter() - started
  tidy(notebook)
  notebook.metadata["iiae_jax"] = {
      "code_sha256": code_sha256(notebook),
      "run": f"{datetime.date.today().isoformat()}, {seconds / 60:.1f} min on {os.cpu_count()} CPU cores "
             f"({platform.processor() or platform.machine()}), the full run (not CI's smoke mode)",
  }
  nbformat.write(notebook, path)
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*", default=list(NOTEBOOKS))
  for name in parser.parse_args().names:
    print(f"{name}: {run(name) / 60:.1f} min", flush=True)


if __name__ == "__main__":
  main()
