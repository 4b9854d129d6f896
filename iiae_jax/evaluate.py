"""Evaluating a saved checkpoint: restore, run every evaluator, write a report.

`evaluate_checkpoint` is what `eval.py` calls. It reads <workdir>/best or
<workdir>/checkpoints, never writes there, and writes only into its output
directory: results.json, index.html and the evaluators' images.
"""
import datetime
import json
import math
import os
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from iiae_jax import checkpointing
from iiae_jax import models
from iiae_jax import run_config
from iiae_jax.errors import CheckpointError, ConfigMismatchError, UsageError
from iiae_jax.evaluation import evaluators as evaluators_lib
from iiae_jax.evaluation.report import format_table, render_html
from iiae_jax.files import write_atomically
from iiae_jax.train_state import abstract_train_state, make_optimizer
from iiae_jax.workdir import config_differences

RESULTS_SCHEMA_VERSION = 1

def parse_checkpoint(checkpoint: Union[str, int]) -> Tuple[str, Optional[int]]:
  """'best' | 'latest' | a step -> (kind, step or None)."""
  if isinstance(checkpoint, (int, np.integer)) and not isinstance(checkpoint, bool):
    return "step", int(checkpoint)
  text = str(checkpoint).strip().lower()
  if text in ("best", "latest"):
    return text, None
  if text.isdigit():
    return "step", int(text)
  raise UsageError(f"checkpoint must be 'best', 'latest' or a step number, got {checkpoint!r}")


def describe_config(run) -> str:
  """A short name for a config that came without a file name."""
  return f"<config: data.name={run.data.name}, model.architecture={run.model.architecture}>"


def _step_dirs(directory: str):
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def _model_differences(saved_flat: Dict[str, Any], run) -> str:
  if not saved_flat:  # older best checkpoints and damaged metadata carry no config
    return ""
  diffs = [(f, a, b) for f, a, b in config_differences(saved_flat, run.record) if f.startswith("model.")]
  if not diffs:
    return ""
  return "\nModel fields that differ:\n" + "\n".join(
      f"  {f}: {a!r} (checkpoint) != {b!r} (config)" for f, a, b in diffs)


def _shorten(text: str, width: int = 400) -> str:
  """Each line of `text` cut to `width` characters (orbax lists every array in its errors)."""
  return "\n".join(line if len(line) <= width else line[:width] + " ..." for line in text.splitlines())


def restore_for_evaluation(config, workdir: str, checkpoint: Union[str, int] = "latest", *,
                           config_name: Optional[str] = None, echo: Callable[[str], None] = print):
  """Restores the variables of a checkpoint of `workdir` that fits `config`.

  Returns (model, variables, info) with info = {"requested", "kind", "step",
  "path", "fell_back", "note"}. `best` without a best checkpoint falls back
  to the latest (with a note through `echo`).

  Raises:
    CheckpointError: no such checkpoint, or one made with
      another config; the message names the checkpoint path and the config.
  """
  run = run_config.parse(config)
  config_name = config_name or describe_config(run)
  workdir = os.path.abspath(workdir)
  kind, step = parse_checkpoint(checkpoint)
  info = {"requested": str(checkpoint), "kind": kind, "step": step, "fell_back": False, "note": ""}
  directory = os.path.join(workdir, "checkpoints")
  if kind == "best":
    best = os.path.join(workdir, "best")
    if _step_dirs(best):
      directory = best
    else:
      info.update(kind="latest", fell_back=True,
                  note=f"no best checkpoint in {best} (it is kept only when a paired_retrieval "
                       "evaluator ran during training and an evaluation qualified: exclusive hits "
                       "at most one each); evaluating the latest checkpoint instead")
      echo("note: " + info["note"])
  steps = _step_dirs(directory)
  if not steps:
    raise CheckpointError(
        f"no checkpoint in {directory} to evaluate with config {config_name} "
        f"(train first: python train.py --config=... --workdir={workdir})")
  if step is not None and step not in steps:
    raise CheckpointError(
        f"no checkpoint {os.path.join(directory, str(step))} to evaluate with config {config_name}; "
        f"steps available in {directory}: {steps}")

  model = models.build_model(run.model)
  template = abstract_train_state(run.seed, model, make_optimizer(run.optimizer))
  path = os.path.join(directory, str(step if step is not None else steps[-1]))
  checkpoints = checkpointing.Checkpoints(directory, max_to_keep=None)  # never deletes: nothing is saved
  try:
    try:
      state, _, restored_step = checkpoints.restore(template, step)
    except CheckpointError as e:
      if not isinstance(e, ConfigMismatchError):  # damaged: no config advice
        tried = [line for line in str(e).splitlines() if line.startswith("checkpoint ")]
        raise CheckpointError(
            f"checkpoint {path} cannot be evaluated: its files are damaged or incomplete:\n"
            f"{_shorten(chr(10).join(tried) or str(e))}") from e
      saved = {}
      try:
        saved = checkpoints.read_meta(step if step is not None else steps[-1]).get("config", {})
      except Exception:  # pylint: disable=broad-except  # the meta may be as damaged as the state
        pass
      raise CheckpointError(
          f"checkpoint {path} cannot be evaluated with config {config_name} (was it made with "
          f"another config, or another version of the model code?): {_shorten(str(e))}"
          f"{_model_differences(saved, run)}") from e
  finally:
    checkpoints.close()
  wanted = step if step is not None else steps[-1]
  if restored_step != wanted:  # the newest was damaged (restore warned): say so in the report
    note = f"checkpoint {os.path.join(directory, str(wanted))} could not be restored; evaluated step {restored_step}"
    info.update(fell_back=True, note="; ".join(filter(None, (info["note"], note))))
    echo("note: " + note)
  path = os.path.join(directory, str(restored_step))
  info.update(step=int(restored_step), path=path)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return model, variables, info


def default_out_dir(workdir: str, info: Dict[str, Any]) -> str:
  return os.path.join(os.path.abspath(workdir), f"eval_{info['kind']}_{info['step']}")


def _check_out_dir(out_dir: str, workdir: str) -> None:
  existing = os.path.abspath(out_dir)
  while not os.path.exists(existing):  # the deepest part of the path that exists
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UsageError(f"--out={out_dir}: {existing} is a file, not a folder; it is left as it is: "
                     "choose another --out (a new or empty folder)")
  out_dir, workdir = os.path.realpath(out_dir), os.path.realpath(workdir)
  protected = [workdir] + [os.path.join(workdir, d) for d in ("checkpoints", "best")]
  for p in protected:
    if out_dir == p or (p != workdir and out_dir.startswith(p + os.sep)):
      raise UsageError(f"--out={out_dir} would write into the run's own folder {p}; "
                       "choose a separate output directory")


def _field(results: Dict[str, Any], key: str) -> Dict[str, Any]:
  """results[key] if it is an object, else {} (a results.json edited or written by other tools)."""
  value = results.get(key)
  return value if isinstance(value, dict) else {}


def _identity(results: Dict[str, Any]) -> Tuple:
  """What makes two reports the same evaluation: the checkpoint and the evaluators."""
  ck = _field(results, "checkpoint")
  return results.get("workdir"), ck.get("path"), ck.get("step"), results.get("config")


def _claim_out_dir(out_dir: str, header: Dict[str, Any]) -> None:
  """Makes <out_dir> this evaluation's, or refuses (UsageError) and leaves it as it is.

  Only a rerun of the same evaluation may write into a folder that holds
  results.json (and images); a folder without one must be empty. The header is
  written as results.json first ("status": "running"), so a folder that an
  interrupted evaluation left behind is still recognised as its own.
  """
  _refuse_other_results(out_dir, header)
  path = os.path.join(out_dir, "results.json")
  if not os.path.exists(path):
    present = sorted(os.listdir(out_dir))
    if present:
      raise UsageError(
          f"{out_dir} already holds {', '.join(present[:5])}{' ...' if len(present) > 5 else ''} "
          "and no results.json of this evaluation; it is left as it is: choose another --out "
          "(a new or empty folder), or move those files away")
  write_atomically(path, json.dumps(dict(header, status="running"), indent=2))


def _refuse_other_results(out_dir: str, header: Dict[str, Any]) -> None:
  """Only a rerun of the same evaluation may replace <out_dir>/results.json (and its images)."""
  path = os.path.join(out_dir, "results.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f"{path} exists but cannot be read as results ({e}); it is left as it is: "
                     "choose another --out, or move it away") from e
  old = old if isinstance(old, dict) else {}
  if _identity(old) != _identity(header):
    ck, config = _field(old, "checkpoint"), _field(old, "config")
    raise UsageError(
        f"{path} holds the results of another evaluation (checkpoint {ck.get('path')!r}, step "
        f"{ck.get('step')}, config {config.get('name')!r}); it is left as it is: choose another "
        "--out, or move that folder away")


def _jsonable(value):
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if math.isfinite(value) else None  # strict JSON has no NaN
  return value


def evaluate_checkpoint(config, workdir: str, checkpoint: Union[str, int] = "latest",
                        out_dir: Optional[str] = None, *, config_name: Optional[str] = None,
                        datasets: Optional[evaluators_lib.Datasets] = None,
                        echo: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
  """Evaluates one checkpoint of `workdir` with every evaluator of config.evals.

  Each evaluator runs on its own split (the test split by default). Writes
  results.json, index.html and the image grids into `out_dir` (default
  <workdir>/eval_<kind>_<step>/, kind = best | latest | step) and prints a
  table of the metrics through `echo` (None: silent). A folder that already
  holds results is written only by a rerun of the same evaluation (same
  checkpoint and evaluators), and any other folder must be empty: the rest is
  refused (UsageError). Files are replaced whole. Returns the content of
  results.json.
  """
  run = run_config.parse(config)  # every bad field, before the workdir is read
  echo = echo or (lambda _: None)
  config_name = config_name or describe_config(run)
  if out_dir:
    _check_out_dir(out_dir, workdir)
  model, variables, info = restore_for_evaluation(run, workdir, checkpoint, config_name=config_name,
                                                  echo=echo)
  out_dir = os.path.abspath(out_dir) if out_dir else default_out_dir(workdir, info)
  os.makedirs(out_dir, exist_ok=True)
  suite = evaluators_lib.EvaluationSuite.from_config(run, training=False, datasets=datasets)
  if not suite.evaluators:
    echo(f"note: config {config_name} has no evals entries; nothing to evaluate")
  header = _jsonable({
      "schema_version": RESULTS_SCHEMA_VERSION,
      "config": {"name": config_name, "dataset": run.data.name,
                 "architecture": run.model.architecture, "data": run.tree.get("data", {}),
                 "evals": {e.name: dict(e.options) for e in suite.evaluators}},
      "workdir": os.path.abspath(workdir),
      "checkpoint": info,
  })
  _claim_out_dir(out_dir, header)
  metrics = suite(model, variables, info["step"], out_dir)
  results = _jsonable(dict(
      header, status="complete", datasets=suite.datasets.sizes(), metrics=metrics,
      artifacts=[os.path.relpath(p, out_dir) for p in suite.artifacts],
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")))
  write_atomically(os.path.join(out_dir, "results.json"), json.dumps(results, indent=2))
  write_atomically(os.path.join(out_dir, "index.html"), render_html(results))
  echo(format_table(results))
  echo(f"wrote {os.path.join(out_dir, 'results.json')} and {os.path.join(out_dir, 'index.html')}")
  return results


