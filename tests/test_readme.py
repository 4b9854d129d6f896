"""The README's promises: its API snippet runs as written, its two commands are what CI and users run,
and every config file says how to run it, how long it takes and what it should produce."""
import os
import re

import pytest

from tests.helpers import ROOT

README = open(os.path.join(ROOT, "README.md")).read()


def _block_after(marker: str) -> str:
  match = re.search(re.escape(marker) + r"\s*```(?:python|bash)\n(.*?)```", README, re.S)
  assert match, f"no code block after {marker} in README.md"
  return match.group(1)


@pytest.mark.slow
def test_custom_loop_snippet_runs_as_written(capsys):
  code = _block_after("<!-- snippet: custom-loop -->")
  namespace = {}
  exec(compile(code, "README.md:custom-loop", "exec"), namespace)
  assert namespace["z_s"].shape == (64, 64)
  printed = capsys.readouterr().out
  assert printed.startswith("loss ") and "kl_zs_rx" in printed


def test_readme_opens_with_the_main_job_and_the_test_command():
  main, test = _block_after("<!-- main-command -->"), _block_after("<!-- test-command -->")
  assert README.index("<!-- main-command -->") < README.index("<!-- test-command -->") < README.index("## ")
  assert main.strip().startswith("pip install -q -r requirements.txt && ")
  assert test.strip().startswith("pip install -q -r requirements.txt -r requirements-convert.txt && ")
  assert "train.py --config=configs/digits_cdcb.py" in main and "eval.py --config=configs/digits_cdcb.py" in main
  assert "pytest" in test
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  assert "<!-- test-command -->" in ci


@pytest.mark.parametrize("name", sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, "configs"))
                                        if n.endswith(".py") and n != "__init__.py"))
def test_every_config_opens_with_its_commands_runtime_and_expected_result(name):
  """House style: a config file says how to run it, how long it takes and what it should produce."""
  import ast
  doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, "configs", f"{name}.py")).read()))
  assert doc, f"configs/{name}.py has no docstring"
  assert f"python train.py --config=configs/{name}.py" in doc
  assert f"python eval.py  --config=configs/{name}.py" in doc
  assert "Runtime:" in doc and "Expected" in doc


@pytest.mark.parametrize("name", ["digits_cdcb", "digits_zs"])
def test_the_readme_results_are_what_the_script_writes_from_the_kept_results_json(name):
  """The measured tables are never typed by hand: scripts/readme_results.py writes them from
  the run's results.json, a copy of which is kept in docs/results/."""
  import json
  from scripts import readme_results
  with open(os.path.join(ROOT, "docs", "results", f"{name}.json")) as f:
    results = json.load(f)
  block = readme_results.block_pattern(name).search(README)
  assert block, f"README.md has no results block for {name}"
  assert block.group(2).strip() == readme_results.tables(results).strip()
  assert results["status"] == "complete" and results["config"]["name"] == f"configs/{name}.py"
