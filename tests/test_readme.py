"""The README's promises: its API snippet runs as written, and its two commands are what CI and users run."""
import os
import re

from tests.helpers import ROOT

README = open(os.path.join(ROOT, "README.md")).read()


def _block_after(marker: str) -> str:
  match = re.search(re.escape(marker) + r"\s*```(?:python|bash)\n(.*?)```", README, re.S)
  assert match, f"no code block after {marker} in README.md"
  return match.group(1)


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
  for command in (main, test):
    assert command.strip().startswith("pip install -q -r requirements.txt && ")
  assert "train.py --config=configs/digits_cdcb.py" in main and "eval.py --config=configs/digits_cdcb.py" in main
  assert "pytest" in test
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  assert "<!-- test-command -->" in ci
