"""Train briefly with trainer.train_and_evaluate, then run `python eval.py` on the run.

Tiny models (config overrides in a config file of the test's own), tens of
steps: the point is the plumbing from the config's evals to results.json,
the PNG grids and index.html, not the numbers.
"""
import importlib.util
import json
import os
import sys
import textwrap

import pytest

from iiae_jax import checkpointing, evaluation, trainer
from iiae_jax.evaluation import grids
from tests.helpers import ROOT, figure_grid, run

pytestmark = pytest.mark.slow

CDCB_CONFIG = """
from configs import digits_cdcb

def get_config():
  config = digits_cdcb.get_config()
  config.data.options.resolution = 16
  config.data.options.copies = 1
  config.model.resolution = 16
  config.model.latent_resolution = 4
  for field in ("exclusive_width", "shared_width", "decoder_width"):
    config.model[field] = 8
  config.model.exclusive_dim = 4
  config.training.batch_size = 8
  config.training.num_steps = 20
  config.training.log_every = 10
  config.training.checkpoint_every = 10
  config.training.eval_every = 10
  config.training.progress_bar = "off"
  config.evals.translation_grid.num_examples = 4
  config.evals.translation_grid.num_samples = 2
  return config
"""

ZS_CONFIG = """
from configs import digits_zs

def get_config():
  config = digits_zs.get_config()
  for field in ("exclusive_width", "shared_width", "decoder_width"):
    config.model[field] = 8
  config.model.exclusive_dim = 4
  config.model.shared_dim = 4
  config.training.num_steps = 20
  config.training.log_every = 10
  config.training.checkpoint_every = 10
  config.training.progress_bar = "off"
  return config
"""


def _load_config(path):
  spec = importlib.util.spec_from_file_location("tiny_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _train(tmp_path, source):
  config_path = tmp_path / "tiny_config.py"
  config_path.write_text(textwrap.dedent(source))
  config = _load_config(str(config_path))
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(config, str(workdir),
                             evaluations=evaluation.EvaluationSuite.for_training(config, str(workdir)))
  return config, str(config_path), workdir


def _eval(config_path, workdir, *flags, returncode=0):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = run([sys.executable, os.path.join(ROOT, "eval.py"), f"--config={config_path}",
              f"--workdir={workdir}", *flags], env=env, cwd=ROOT)
  assert proc.returncode == returncode, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc.stdout if returncode == 0 else proc.stderr


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_digits_cdcb_train_then_eval_py_writes_every_metric_grid_and_the_index(tmp_path):
  config, config_path, workdir = _train(tmp_path, CDCB_CONFIG)
  checkpoints_before = _files(workdir / "checkpoints")
  has_best = bool(os.listdir(workdir / "best"))
  stdout = _eval(config_path, workdir, "--checkpoint=best")
  kind = "best" if has_best else "latest"
  step = int(os.listdir(workdir / "best")[0]) if has_best else 20
  out = workdir / f"eval_{kind}_{step}"
  results = json.loads((out / "results.json").read_text())

  assert results["config"]["name"] == config_path and results["config"]["dataset"] == "digits_cdcb"
  assert results["checkpoint"]["kind"] == kind and results["checkpoint"]["step"] == step
  assert results["checkpoint"]["fell_back"] == (not has_best)
  assert results["datasets"] == {"test": {"kind": "paired", "num_pairs": 359},
                                 "valid": {"kind": "paired", "num_pairs": 180}}
  paired = {"shared_x_to_y", "shared_y_to_x", "exclusive_x_to_y", "exclusive_y_to_x",
            "shared_x_to_y_hits", "shared_y_to_x_hits", "exclusive_x_to_y_hits", "exclusive_y_to_x_hits",
            "num_pairs", "chance"}
  probes = {f"{z}/{f}{s}" for z in ("z_s_x", "z_x", "z_y") for f in ("digit", "x_color", "y_color")
            for s in ("", "_chance")}
  grid = {"recon_mae_x", "recon_mae_y", "translation_mae_x_to_y", "translation_mae_y_to_x",
          "images_written", "num_examples"}
  # eval.py's keys name the split each metric was computed on (test), as training's name theirs.
  expected = ({f"test/paired_retrieval/{k}" for k in paired} | {f"test/disentanglement/{k}" for k in probes}
              | {f"test/translation_grid/{k}" for k in grid})
  assert set(results["metrics"]) == expected
  assert results["metrics"]["test/paired_retrieval/num_pairs"] == 359
  assert all(0.0 <= results["metrics"][f"test/paired_retrieval/{k}"] <= 1.0
             for k in paired if not k.endswith("hits") and k != "num_pairs")
  assert "test/paired_retrieval/shared_x_to_y" in stdout                 # the printed table

  n, s = 4, 2
  size = lambda rows, cols: grids.grid_size(rows, cols, 16, 16)
  sizes = {"reconstruction": size(n, 4), "translation_x_to_y": size(n, 2 + s),
           "translation_y_to_x": size(n, 2 + s), "style_transfer_x_to_y": size(n + 1, n + 1),
           "style_transfer_y_to_x": size(n + 1, n + 1), "analogy_x": size(n + 1, n + 1),
           "analogy_y": size(n + 1, n + 1)}
  assert sorted(results["artifacts"]) == sorted(f"translation_grid/{k}.png" for k in sizes)
  assert results["metrics"]["test/translation_grid/images_written"] == len(sizes)
  index = (out / "index.html").read_text()
  for name, (h, w) in sizes.items():
    assert figure_grid(out / "translation_grid" / f"{name}.png", 16).shape == (h, w, 3), name
    assert f'src="translation_grid/{name}.png"' in index
  assert "test/paired_retrieval/exclusive_x_to_y_hits" in index
  assert _files(workdir / "checkpoints") == checkpoints_before     # the run is untouched


def test_digits_zs_train_then_eval_py_reports_zero_shot_retrieval(tmp_path):
  config, config_path, workdir = _train(tmp_path, ZS_CONFIG)
  stdout = _eval(config_path, workdir, "--checkpoint=best", f"--out={tmp_path / 'report'}")
  assert "no best checkpoint" in stdout                              # zero-shot runs keep no best
  results = json.loads((tmp_path / "report" / "results.json").read_text())
  assert results["checkpoint"]["kind"] == "latest" and results["checkpoint"]["step"] == 20
  assert results["checkpoint"]["fell_back"] is True
  test = results["datasets"]["test"]
  assert test["kind"] == "zero_shot" and test["num_classes"] == 3
  ks = (5, 50)
  expected = {"map_all", "num_queries", "queries_without_relevant"} | {
      f"{m}@{k}{x}" for k in ks for m, x in (("precision", ""), ("map", ""), ("map", "_reference"))}
  # Two evaluators: unseen classes (test split) and seen classes (train split).
  entries = ("test/zs_retrieval", "train/zs_retrieval_seen")   # each evaluator on its own split
  assert set(results["metrics"]) == {f"{entry}/{k}" for entry in entries for k in expected}
  assert results["metrics"]["test/zs_retrieval/num_queries"] == test["num_sketches"]
  assert (results["metrics"]["train/zs_retrieval_seen/num_queries"]
          == results["datasets"]["train"]["num_sketches"])
  for entry in entries:
    for k in expected - {"num_queries", "queries_without_relevant"}:
      assert 0.0 <= results["metrics"][f"{entry}/{k}"] <= 1.0
  assert results["artifacts"] == []
  assert "test/zs_retrieval/map@50_reference" in (tmp_path / "report" / "index.html").read_text()
  error = _eval(config_path, workdir, "--config.training.batch_size=-3", returncode=1)
  assert error.strip().splitlines()[-1] == "  training.batch_size must be an integer >= 0, got -3"
  assert "eval.py: error: invalid config:" in error and "Traceback" not in error
  # The training run evaluated zero-shot retrieval too (on test: the config has no valid split).
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("test/zs_retrieval/map_all" in record for record in logged if record["kind"] == "eval")


def test_mnist_cdcb_config_trains_and_selects_on_pix2pix_files_in_the_real_layout(tmp_path):
  """configs/mnist_cdcb.py (model shrunk, 32x32) on train/val/test pair files: trains, evaluates, keeps the best."""
  from tests.test_data_pix2pix import write_pix2pix
  write_pix2pix(str(tmp_path / "data" / "mnist_cdcb"), count=8, size=32)
  config = _load_config(os.path.join(ROOT, "configs", "mnist_cdcb.py"))
  config.data.data_dir = str(tmp_path / "data")
  config.data.options.resolution = config.model.resolution = 32
  config.model.latent_resolution = 4
  config.model.update(dict(exclusive_width=4, shared_width=4, decoder_width=4))
  # 1 step per epoch: evaluate every step (the config's 5,000) and stop after 7 (not 1,012,000).
  config.training.update(dict(num_steps=7, eval_every=1, log_every=1, progress_bar="off"))
  workdir = tmp_path / "run"
  state = trainer.train_and_evaluate(config, str(workdir),
                                     evaluations=evaluation.EvaluationSuite.for_training(config, str(workdir)))
  assert int(state.step) == 7
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged if r["kind"] == "eval"] == list(range(1, 8))  # after every epoch
  best = checkpointing.Checkpoints(str(workdir / "best")).steps()
  assert best and min(best) >= 6                   # docs/method.md §4: checkpoints from epoch 6 on
