"""Pins the training loop: device invariance, exact resumption, faults, logs and the CLI."""
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from iiae_jax import checkpointing, train_state, trainer
from iiae_jax.errors import NumericalFault
from tests.helpers import HANG_S, ROOT, FunctionSuite, flat_leaves, run, run_on_devices, start, stop, tiny_train_config


def _train(config, workdir, evaluate=None, **kw):
  """train_and_evaluate; `evaluate`: a function (model, variables, step) -> metrics, or a suite."""
  if callable(evaluate) and not hasattr(evaluate, "prepare"):
    evaluate = FunctionSuite(evaluate)
  return trainer.train_and_evaluate(config, str(workdir), evaluations=evaluate, **kw)


@pytest.mark.slow
def test_pmap_over_8_devices_equals_one_device(tmp_path):
  """5 steps, batch 16, flips and dropout on: 8 host devices == 1 device (per-example randomness)."""
  config = tiny_train_config("digits_cdcb", num_steps=5)
  single = _train(config, tmp_path / "one")
  result = run_on_devices(f"""
    import json, numpy as np
    from iiae_jax import trainer
    from tests.helpers import tiny_train_config, flat_leaves
    import jax
    assert jax.device_count() == 8
    state = trainer.train_and_evaluate(tiny_train_config("digits_cdcb", num_steps=5), {str(tmp_path / 'eight')!r})
    np.savez({str(tmp_path / 'eight.npz')!r}, **flat_leaves(state.variables))
    print(json.dumps({{"step": int(state.step)}}))
  """)
  assert result["step"] == 5 == int(single.step)
  eight = np.load(tmp_path / "eight.npz")
  one = flat_leaves(single.variables)
  assert set(one) == set(eight.files)
  assert any("batch_stats" in k for k in one)
  for name, value in one.items():
    np.testing.assert_allclose(eight[name], value, atol=1e-5, rtol=1e-5, err_msg=name)


def test_batch_that_does_not_divide_the_devices_is_a_clear_error(tmp_path):
  result = run_on_devices(f"""
    import json
    from iiae_jax import errors, trainer
    from tests.helpers import tiny_train_config
    try:
      trainer.train_and_evaluate(tiny_train_config("digits_cdcb", batch_size=12), {str(tmp_path)!r})
    except errors.ConfigError as e:   # train.py prints it as one line
      print(json.dumps({{"error": str(e)}}))
  """)
  assert "training.batch_size = 12" in result["error"] and "8" in result["error"]


def _train_cmd(workdir, num_steps, extra=()):
  overrides = {"model.exclusive_width": 4, "model.shared_width": 4, "model.decoder_width": 4, "model.exclusive_dim": 2, "model.shared_dim": 4,
               "training.num_steps": num_steps, "training.log_every": 2, "training.checkpoint_every": 4,
               "training.progress_bar": "off"}
  return ([sys.executable, os.path.join(ROOT, "train.py"), "--config=" + os.path.join(ROOT, "configs/digits_zs.py"),
           f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()] + list(extra))


def _env():
  return dict(os.environ, PYTHONPATH=ROOT)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
  killed, log = tmp_path / "killed", tmp_path / "killed.log"
  ckpt_dir = killed / "checkpoints"
  with open(log, "w") as stderr:
    proc = start(_train_cmd(killed, 400), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
  try:
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline and proc.poll() is None:
      steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if ckpt_dir.exists() else []
      if steps and max(steps) >= 8:
        break
      time.sleep(0.05)
    assert proc.poll() is None, log.read_text()[-3000:]
  finally:
    stop(proc)                                      # SIGKILL
  saved = checkpointing.Checkpoints(str(ckpt_dir)).latest_step()
  assert saved is not None and 8 <= saved < 400
  num_steps = saved + 12                           # three checkpoints past the kill, not the 400 it had left
  config = _cli_config(num_steps=num_steps)
  resumed = _train(config, killed)
  uninterrupted = _train(config, tmp_path / "straight")
  assert int(resumed.step) == int(uninterrupted.step) == num_steps
  a, b = flat_leaves(resumed), flat_leaves(uninterrupted)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  # The log holds every step once, as the uninterrupted run's; the killed run's records of the
  # steps replayed after the checkpoint are kept aside.
  logged = {name: [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
            for name in ("killed", "straight")}
  train = {name: [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
           for name, records in logged.items()}
  assert [s for s, _ in train["killed"]] == list(range(2, num_steps + 1, 2))
  assert train["killed"] == train["straight"]
  for aside in killed.glob("metrics.interrupted_after_step_*.jsonl"):
    assert aside.name == f"metrics.interrupted_after_step_{saved}.jsonl"
    assert all(json.loads(line)["step"] > saved for line in open(aside))


def test_a_resumed_log_sets_aside_the_records_after_the_checkpoint(tmp_path):
  from iiae_jax import observability
  path = tmp_path / "metrics.jsonl"
  records = [json.dumps({"step": s, "kind": "train", "loss": s}) + "\n" for s in range(1, 11)]
  path.write_text("".join(records) + '{"step": 11, "kind": "tr')   # a kill cut the last record short
  writer = observability.MetricWriter(str(tmp_path), start_step=6)
  writer.write(7, {"loss": 70.0, "hits": np.int64(3)})
  writer.close()
  logged = [json.loads(line) for line in path.read_text().splitlines()]  # every line whole
  assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6, 7]
  assert logged[-1]["loss"] == 70.0 and logged[-1]["hits"] == 3 and isinstance(logged[-1]["hits"], int)
  aside = tmp_path / "metrics.interrupted_after_step_6.jsonl"
  assert aside.read_text() == "".join(records[6:]) + '{"step": 11, "kind": "tr\n'
  observability.MetricWriter(str(tmp_path), start_step=7).close()  # nothing after step 7
  assert len(path.read_text().splitlines()) == 7
  observability.MetricWriter(str(tmp_path), start_step=0).close()  # a fresh start keeps nothing
  assert aside.read_text().startswith("".join(records[6:]))        # never overwritten
  moved = (tmp_path / "metrics.interrupted_after_step_0.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in moved] == [1, 2, 3, 4, 5, 6, 7]
  assert path.read_text() == ""


def _cli_config(num_steps):
  """The config that _train_cmd builds on the command line."""
  from configs import digits_zs
  config = digits_zs.get_config()
  config.model.update(dict(exclusive_width=4, shared_width=4, decoder_width=4, exclusive_dim=2, shared_dim=4))
  config.training.update(dict(num_steps=num_steps, log_every=2, checkpoint_every=4, progress_bar="off"))
  return config


@pytest.mark.slow
def test_train_py_runs_end_to_end_and_writes_checkpoint_events_and_json_log(tmp_path):
  workdir = tmp_path / "run"
  proc = run(_train_cmd(workdir, 6, ["--config.optimizer.learning_rate=1e-3"]), env=_env(), cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert checkpointing.Checkpoints(str(workdir / "checkpoints")).latest_step() == 6
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train = [r for r in records if r["kind"] == "train"]
  assert [r["step"] for r in train] == [2, 4, 6]
  for term in ("loss", "recon_x", "recon_y", "kl_zx", "kl_zy", "kl_zs", "kl_zs_rx", "kl_zs_ry",
               "class", "c_t", "learning_rate", "steps_per_sec", "grad_norm"):
    assert term in train[-1]
  assert train[-1]["learning_rate"] == 1e-3                 # the override took effect
  events = _read_event_scalars(workdir / "tensorboard")
  assert {"train/loss", "train/c_t", "train/learning_rate", "train/steps_per_sec"} <= set(events)
  assert [s for s, _ in events["train/loss"]] == [2, 4, 6]
  saved = json.load(open(workdir / "config.json"))
  assert saved["optimizer"]["learning_rate"] == 1e-3
  assert "train.py" in open(workdir / "command.txt").read()


def _read_event_scalars(folder):
  """Parses TensorBoard event files (TFRecord framing of Event protos) without TensorFlow."""
  from tensorboardX.proto import event_pb2
  scalars = {}
  for name in os.listdir(folder):
    data = open(os.path.join(folder, name), "rb").read()
    pos = 0
    while pos < len(data):
      length = int.from_bytes(data[pos:pos + 8], "little")
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_unknown_config_field_is_an_error(tmp_path):
  proc = run(_train_cmd(tmp_path, 2, ["--config.training.no_such_field=3"]), env=_env(), cwd=ROOT)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "train.py: error: --config.training.no_such_field: the config has no field 'no_such_field'")
  assert "Traceback" not in proc.stderr


def test_missing_dataset_says_what_to_download_and_where(tmp_path):
  from configs import sketchy
  config = sketchy.get_config()
  config.data.data_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError) as err:
    _train(config, tmp_path / "run")
  message = str(err.value)
  assert "SketchyVGG" in message and "zenodo" in message


def test_nonfinite_loss_stops_naming_step_and_term_and_keeps_the_last_checkpoint(tmp_path):
  config = tiny_train_config("digits_zs", num_steps=8)
  config.training.checkpoint_every = 4
  _train(config, tmp_path)                         # steps 0..7, checkpoints at 4 and 8
  config.training.num_steps = 20
  config.optimizer.learning_rate = 1e30            # blows up within a few steps
  with pytest.raises(NumericalFault, match=r"non-finite value at step \d+ in: .*"):
    _train(config, tmp_path, allow_config_change=True)
  steps = checkpointing.Checkpoints(str(tmp_path / "checkpoints")).steps()
  assert max(steps) == 8                           # nothing saved after the fault


def test_a_faulty_state_is_never_evaluated(tmp_path):
  """The host checks the recorded fault before each evaluation (nothing else logs or saves here)."""
  config = tiny_train_config("digits_zs", num_steps=20)
  config.training.update(log_every=1000, checkpoint_every=1000, eval_every=2)
  config.optimizer.learning_rate = 1e30            # blows up within a few steps
  evaluated = []

  def evaluate(model, variables, step):
    evaluated.append(all(np.isfinite(a).all() for a in jax.tree.leaves(variables["params"])))
    return {}
  with pytest.raises(NumericalFault):
    _train(config, tmp_path, evaluate=evaluate)
  assert all(evaluated)


def test_a_missing_evaluation_split_fails_before_the_first_step(tmp_path, monkeypatch):
  """A split folder the data lack (say pix2pix's val/) is found when the run starts, not at its
  first evaluation (an epoch later on the image recipes)."""
  from iiae_jax import evaluation
  from iiae_jax.data import DatasetNotFoundError
  config = tiny_train_config("digits_zs", num_steps=4)
  config.evals.zs = dict(type="zs_retrieval", split="test", ks=(5,))

  def loader(split):
    raise DatasetNotFoundError(f"digits_zs: the split folder for {split!r} is missing")
  calls = []
  monkeypatch.setattr(trainer, "make_train_call", lambda *a, **k: calls.append(1))
  evaluate = evaluation.EvaluationSuite.for_training(config, str(tmp_path),
                                                     datasets=evaluation.Datasets(config.data, loader))
  with pytest.raises(DatasetNotFoundError, match="split folder for 'test' is missing"):
    _train(config, tmp_path, evaluate=evaluate)
  assert not calls


@pytest.mark.slow
def test_a_failing_evaluation_keeps_the_state_it_evaluated(tmp_path):
  """The evaluation's error propagates, but the trained state is checkpointed first (no
  checkpoint was due at that step), and the rerun resumes from it."""
  config = tiny_train_config("digits_zs", num_steps=8)
  config.training.update(checkpoint_every=1000, eval_every=4)

  def failing(model, variables, step):
    raise RuntimeError(f"evaluation broke at step {step}")
  with pytest.raises(RuntimeError, match="evaluation broke at step 4"):
    _train(config, tmp_path, evaluate=failing)
  assert checkpointing.Checkpoints(str(tmp_path / "checkpoints")).steps() == [4]
  # Failing again on the rerun (step 4 is already saved): the evaluation's own error, not orbax's.
  with pytest.raises(RuntimeError, match="evaluation broke at step 4"):
    _train(config, tmp_path, evaluate=failing)
  assert checkpointing.Checkpoints(str(tmp_path / "checkpoints")).steps() == [4]
  evaluated = []
  record = lambda model, variables, step: evaluated.append(step) or {}
  _train(config, tmp_path, evaluate=record)
  assert evaluated == [4, 8]                       # the one that failed first
  # The last step's evaluation failing: the rerun has no step left to train, but evaluates.
  with pytest.raises(RuntimeError, match="evaluation broke at step 8"):
    _train(config, tmp_path / "last", evaluate=lambda m, v, step: failing(m, v, step) if step == 8 else {})
  evaluated.clear()
  _train(config, tmp_path / "last", evaluate=record)
  assert evaluated == [8]


@pytest.mark.slow
def test_a_resumed_run_logs_the_same_windows_as_an_uninterrupted_one(tmp_path):
  """Checkpoints between log lines carry the steps since the last line: the first line after a
  resume averages all of them, as the uninterrupted run's does."""
  import shutil
  config = tiny_train_config("digits_zs", num_steps=8)
  config.training.update(log_every=4, checkpoint_every=3, max_to_keep=5)
  _train(config, tmp_path / "straight")
  _train(config, tmp_path / "resumed")
  for step in (6, 8):                              # resumes at step 3: the window holds steps 1-3
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / str(step))
  assert checkpointing.Checkpoints(str(tmp_path / "resumed" / "checkpoints")).steps() == [3]
  _train(config, tmp_path / "resumed")
  logged = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("straight", "resumed")}
  terms = ("loss", "recon_x", "kl_zs", "c_t", "grad_norm")
  lines = {name: [(r["step"],) + tuple(r[k] for k in terms) for r in records]
           for name, records in logged.items()}
  assert [line[0] for line in lines["straight"]] == [4, 8]
  assert lines["resumed"] == lines["straight"]


def _paired_metrics(shared, exclusive_hits=0):
  return {"valid/paired_retrieval/shared_x_to_y": shared, "valid/paired_retrieval/shared_y_to_x": shared,
          "valid/paired_retrieval/exclusive_x_to_y_hits": exclusive_hits,
          "valid/paired_retrieval/exclusive_y_to_x_hits": exclusive_hits}


@pytest.mark.slow
def test_the_best_checkpoint_is_chosen_from_epoch_select_from_epoch_on(tmp_path):
  """docs/method.md §4: evaluations every epoch; earlier ones are logged but do not compete for best/."""
  from iiae_jax import input_pipeline
  config = tiny_train_config("digits_cdcb")
  config.data.options.copies = 1                   # an epoch of 1,258 pairs, not 8 colourings of each
  config.training.batch_size = input_pipeline.make_train_input(config).num_examples // 2   # 2 steps per epoch
  config.training.update(num_steps=0, num_epochs=4, eval_every_epochs=1, select_from_epoch=2,
                         checkpoint_every=1000)
  scores = {2: 0.9, 4: 0.5, 6: 0.7, 8: 0.6}       # the best overall (epoch 1) is too early

  def evaluate(model, variables, step):
    return _paired_metrics(scores[step], exclusive_hits=2 if step == 4 else 0)
  _train(config, tmp_path, evaluate=evaluate)
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged if r["kind"] == "eval"] == [2, 4, 6, 8]
  # Step 4 (epoch 2) is eligible but its exclusive latents identify pairs; step 6 wins.
  assert checkpointing.Checkpoints(str(tmp_path / "best")).steps() == [6]


@pytest.mark.slow
def test_a_rerun_replaces_the_kept_best_only_with_a_better_one(tmp_path):
  """best/ can hold a step newer than the checkpoint a rerun resumes from (killed between the two
  saves): the rerun compares with best/'s own record, may reach that step again and score it a
  little higher (a replay is not always bitwise), and a fresh start keeps a better earlier best."""
  import shutil
  config = tiny_train_config("digits_zs", num_steps=8)
  config.training.update(checkpoint_every=4, eval_every=2)
  run = lambda scores, **kw: _train(config, tmp_path, evaluate=lambda m, v, step: _paired_metrics(scores[step]), **kw)
  kept = lambda: [(s, checkpointing.Checkpoints(str(tmp_path / "best")).read_meta(s)["score"])
                  for s in checkpointing.Checkpoints(str(tmp_path / "best")).steps()]
  run({2: 0.1, 4: 0.2, 6: 0.3, 8: 0.4})
  assert kept() == [(8, 0.8)]                     # selection_score: X->Y + Y->X
  shutil.rmtree(tmp_path / "checkpoints" / "8")   # the run resumes from step 4
  run({6: 0.35, 8: 0.41})
  assert kept() == [(8, 0.82)]
  shutil.rmtree(tmp_path / "checkpoints")          # a fresh start next to best/
  run({2: 0.1, 4: 0.2, 6: 0.3, 8: 0.4})
  assert kept() == [(8, 0.82)]
  shutil.rmtree(tmp_path / "checkpoints")
  config.loss.beta = 0.9                           # best/ of another config is not compared with
  with pytest.raises(checkpointing.CheckpointError, match=r"best holds a run of a different config"):
    run({})
  # Allowed: the other config's best is kept aside, this config's evaluations compete afresh,
  # and the next run needs no flag.
  run({2: 0.1, 4: 0.05, 6: 0.02, 8: 0.01}, allow_config_change=True)
  assert kept() == [(2, 0.2)]
  aside = checkpointing.Checkpoints(str(tmp_path / "best.until_step_0"))
  assert aside.steps() == [8] and aside.read_meta(8)["score"] == 0.82
  config.training.num_steps = 10
  run({10: 0.3})
  assert kept() == [(10, 0.6)]


def test_checkpoints_every_keep_every_epochs_are_never_deleted(tmp_path):
  """docs/method.md §4 Cars keeps a checkpoint every 50 epochs: those outlive max_to_keep, and a call of
  several steps ends on each of them (digits_zs: 90 steps per epoch; calls of 4 steps)."""
  config = tiny_train_config("digits_zs", num_steps=200)
  config.training.update(keep_every_epochs=1, max_to_keep=1, checkpoint_every=1000, log_every=1000,
                         steps_per_call=4)
  _train(config, tmp_path)
  assert checkpointing.Checkpoints(str(tmp_path / "checkpoints")).steps() == [90, 180, 200]


def test_a_selection_epoch_after_the_last_step_is_refused_before_training(tmp_path):
  config = tiny_train_config("digits_cdcb", num_steps=3)
  config.training.select_from_epoch = 1             # hundreds of steps per epoch at batch 16
  with pytest.raises(ValueError, match=r"training.select_from_epoch = 1 starts model selection at step \d+, "
                                       r"after the last step \(3\)"):
    _train(config, tmp_path, evaluate=lambda *a: {})
  assert not os.path.exists(tmp_path / "checkpoints")


def test_fault_mask_names_the_offending_sources():
  mask = (1 << train_state.FAULT_SOURCES.index("data x")) | (1 << train_state.FAULT_SOURCES.index("kl_zs"))
  message = train_state.describe_fault(17, mask)
  assert "step 17" in message and "data x" in message and "kl_zs" in message and "recon_y" not in message


@pytest.mark.slow
def test_resuming_with_a_different_config_is_refused_naming_the_fields(tmp_path):
  config = tiny_train_config("digits_zs", num_steps=2)
  _train(config, tmp_path)
  config.loss.beta = 0.9
  config.training.num_steps = 4
  with pytest.raises(checkpointing.CheckpointError, match=r"loss.beta: 0.5 \(checkpoint\) != 0.9"):
    _train(config, tmp_path)
  state = _train(config, tmp_path, allow_config_change=True)
  assert int(state.step) == 4
  # config.json describes the run from now on; the one it replaced is kept.
  assert json.loads((tmp_path / "config.json").read_text())["loss"]["beta"] == 0.9
  assert json.loads((tmp_path / "config.until_step_2.json").read_text())["loss"]["beta"] == 0.5
  # A resumable change (more steps) needs no flag, and config.json follows it too.
  config.training.num_steps = 5
  assert int(_train(config, tmp_path).step) == 5
  assert json.loads((tmp_path / "config.json").read_text())["training"]["num_steps"] == 5
  assert json.loads((tmp_path / "config.until_step_4.json").read_text())["training"]["num_steps"] == 4
  assert int(_train(config, tmp_path).step) == 5                  # the same command again
  assert sorted(p.name for p in tmp_path.glob("config*.json")) == [
      "config.json", "config.until_step_2.json", "config.until_step_4.json"]


def test_several_steps_per_call_equal_one_step_per_call(tmp_path):
  config = tiny_train_config("digits_zs", num_steps=7)
  one = _train(config, tmp_path / "one")
  config.training.steps_per_call = 3               # calls of 3, 3 and 1 steps
  three = _train(config, tmp_path / "three")
  a, b = flat_leaves(one), flat_leaves(three)
  assert int(one.step) == int(three.step) == 7
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_train_call_compiles_once_per_call_length_with_the_cpu_options_and_matches_pmap():
  """The train call's compiler options change speed, not results; one program per call length."""
  from benchmarks import step_trace
  from iiae_jax import input_pipeline, models, parallel
  config = tiny_train_config("digits_zs", num_steps=4)
  model = models.build_model(config.model)
  train_input = input_pipeline.make_train_input(config)
  optimizer = train_state.make_optimizer(config.optimizer)
  state = train_state.create_train_state(config.seed, model, optimizer)
  call = train_state.make_train_call(model, optimizer, config.loss, train_input)
  assert call.compiler_options == train_state.CPU_COMPILER_OPTIONS
  resident = parallel.replicate(train_input.resident())
  out = {}
  for name, fn in (("options", call), ("plain pmap", call._pmapped)):
    replicated = parallel.replicate(state)
    for step, k in ((0, 2), (2, 1), (3, 1)):
      replicated, _ = fn(replicated, train_input.host_inputs(step, k), resident)
    out[name] = flat_leaves(parallel.unreplicate(replicated))
  assert len(call._compiled) == 2                   # 2 steps per call, then 1
  # The program names the scopes by which benchmarks/step_trace.py attributes op time
  # (read from the lowered program: a cached executable may keep older op names).
  text = call.lower(parallel.replicate(state), train_input.host_inputs(0, 2), resident).as_text(debug_info=True)
  for part, scopes in step_trace.PARTS[:3]:
    assert all(f"{scope}/" in text for scope in scopes), part
  for leaf, value in out["plain pmap"].items():
    np.testing.assert_allclose(out["options"][leaf], value, rtol=1e-6, atol=1e-7, err_msg=leaf)


@pytest.mark.slow
def test_a_best_checkpoint_lost_while_it_was_written_is_recovered_or_forgotten(tmp_path, caplog):
  """The best and the regular saves are independent: a kill can finish checkpoint S but not
  best/S. The resumed run (at S) writes best/S again from the restored state; a best step that
  cannot be restored no longer blocks later evaluations with its unwritten score."""
  import shutil
  config = tiny_train_config("digits_zs", num_steps=4)
  config.training.update(checkpoint_every=2, eval_every=2)
  best = lambda: checkpointing.Checkpoints(str(tmp_path / "best"))
  run = lambda scores: _train(config, tmp_path, evaluate=lambda m, v, step: _paired_metrics(scores[step]))
  run({2: 0.1, 4: 0.4})
  assert best().steps() == [4]
  shutil.rmtree(tmp_path / "best" / "4")          # killed before best/4 was finished
  config.training.num_steps = 6
  with caplog.at_level("WARNING"):
    run({6: 0.3})                                  # worse than step 4's 0.8
  assert "lacks the best checkpoint (step 4)" in caplog.text
  assert [(s, best().read_meta(s)["score"]) for s in best().steps()] == [(4, 0.8)]
  shutil.rmtree(tmp_path / "best" / "4")          # lost, and the run resumes past it
  config.training.num_steps = 8
  run({8: 0.2})
  assert [(s, best().read_meta(s)["score"]) for s in best().steps()] == [(8, 0.4)]


def test_equal_hit_totals_tie_and_the_earlier_evaluation_stays(tmp_path):
  config = tiny_train_config("digits_zs", num_steps=4)
  config.training.update(checkpoint_every=4, eval_every=2)
  scores = {2: (0.94, 0.99), 4: (1.0, 0.93)}        # 1.93 and 1.9300000000000002 in floats

  def evaluate(model, variables, step):
    metrics = _paired_metrics(0.0)
    metrics["valid/paired_retrieval/shared_x_to_y"], metrics["valid/paired_retrieval/shared_y_to_x"] = scores[step]
    return metrics
  _train(config, tmp_path, evaluate=evaluate)
  assert checkpointing.Checkpoints(str(tmp_path / "best")).steps() == [2]


def test_the_plain_progress_line_shows_slow_rates_and_their_eta(caplog):
  """Without a terminal, a log line per logged step: 7 s per step is 0.143 steps/s, not 0.1."""
  import logging
  from iiae_jax import observability
  progress = observability.Progress(total=1000, initial=0, mode="off")
  with caplog.at_level(logging.INFO):
    progress.update(100, {"loss": 2.5, "steps_per_sec": 1 / 7})
  assert "step 100/1000  loss 2.5  0.143 steps/s  ETA 1:45:00" in caplog.text


def test_training_evaluations_name_their_split_draw_into_tensorboard_and_log_one_readable_line(tmp_path, caplog):
  """digits_cdcb's evaluations on the validation split: metric keys valid/<entry>/<metric> in
  metrics.jsonl, TensorBoard and best/'s record; the translation and analogy figures as images
  in the event files (the grid entry computes no metrics during training); one log line of the
  metrics a user decides on."""
  from iiae_jax import evaluation
  from tests.helpers import read_events
  config = tiny_train_config("digits_cdcb", num_steps=4)
  config.training.update(eval_every=2, checkpoint_every=1000)
  config.data.valid_split = "valid"
  config.evals.paired_retrieval = dict(type="paired_retrieval", split="test", max_examples=20)
  config.evals.grid = dict(type="translation_grid", split="test", num_examples=3, num_samples=2)
  with caplog.at_level("INFO"):
    _train(config, tmp_path, evaluate=evaluation.EvaluationSuite.for_training(config, str(tmp_path)))
  evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["kind"] == "eval"]
  assert [r["step"] for r in evals] == [2, 4]
  assert all(k.startswith("valid/paired_retrieval/") for r in evals for k in r if k not in ("step", "kind", "time"))
  best = checkpointing.Checkpoints(str(tmp_path / "best"))
  assert best.steps() and all(k.startswith("valid/paired_retrieval/") for k in best.read_meta(best.steps()[0])["metrics"])
  events = read_events(tmp_path / "tensorboard")
  scalars = {(tag, step) for tag, step, value in events if not hasattr(value, "shape")}
  assert {("eval/valid/paired_retrieval/shared_x_to_y", 2), ("eval/valid/paired_retrieval/shared_x_to_y", 4)} <= scalars
  images = {(tag, step): value for tag, step, value in events if hasattr(value, "shape")}
  for step in (2, 4):
    for grid in ("translation_x_to_y", "translation_y_to_x", "analogy_x", "analogy_y"):
      image = images[(f"eval/valid/grid/{grid}", step)]
      assert image.dtype == np.uint8 and image.shape[2] == 3 and image.std() > 0, grid
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval at step")]
  assert len(lines) == 2 and lines[0].startswith("eval at step 2: paired_retrieval on valid: shared X->Y ")
  assert "exclusive hits" in lines[0] and "of 20 pairs" in lines[0] and "chance" not in lines[0]


def test_zero_shot_evaluations_draw_a_retrieval_strip(tmp_path):
  """A row per query sketch, its top-ranked photos green where they share its class."""
  from iiae_jax import evaluation
  from tests.helpers import read_events
  config = tiny_train_config("digits_zs", num_steps=2)
  config.evals.zs = dict(type="zs_retrieval", split="test", ks=(5,))
  _train(config, tmp_path, evaluate=evaluation.EvaluationSuite.for_training(config, str(tmp_path)))
  (strip,) = [v for tag, step, v in read_events(tmp_path / "tensorboard") if tag == "eval/test/zs/top_10"]
  green, red = (np.all(strip == c, axis=-1).sum() for c in ((170, 225, 170), (240, 170, 170)))
  assert green > 0 and red > 0 and strip.shape[1] == 11 * 84
