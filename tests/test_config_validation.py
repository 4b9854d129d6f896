"""Pins config validation: impossible values fail at start-up, each by its field name."""
import importlib
import os
import sys
import time

import ml_collections
import pytest

from iiae_jax import evaluate, schedule, trainer
from iiae_jax.errors import ConfigError
from iiae_jax.run_config import validate_config
from tests.helpers import ROOT, run, tiny_train_config

CONFIG_FILES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                      if f.endswith(".py") and f != "__init__.py")


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_shipped_config_is_valid(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  validate_config(config, num_devices=1)


def _features():
  return tiny_train_config("digits_zs")


def _images():
  return tiny_train_config("digits_cdcb")


# (config maker, field path, bad value, what the message must say)
BAD_VALUES = [
    (_features, "loss.beta", -1.0, "loss.beta must be >= 0, got -1.0"),
    (_features, "loss.lam", -0.5, "loss.lam must be >= 0, got -0.5"),
    (_features, "loss.recon_weight", -10.0, "loss.recon_weight must be >= 0"),
    (_features, "loss.class_weight", -1.0, "loss.class_weight must be >= 0"),
    (_features, "loss.annealing_rate", 0.0, "loss.annealing_rate must be > 0"),
    (_features, "loss.recon", "l3", "loss.recon must be one of ['l1', 'l2']"),
    (_features, "loss.beta", float("nan"), "loss.beta must be >= 0, got nan"),
    (_features, "optimizer.learning_rate", 0.0, "optimizer.learning_rate must be > 0"),
    (_features, "optimizer.learning_rate", -1e-3, "optimizer.learning_rate must be > 0"),
    (_features, "optimizer.b1", 1.0, "optimizer.b1 must be in [0, 1)"),
    (_features, "optimizer.b2", -0.1, "optimizer.b2 must be in [0, 1)"),
    (_features, "optimizer.eps", 0.0, "optimizer.eps must be > 0"),
    (_features, "optimizer.name", "sgd", "optimizer.name must be one of ['adam']"),
    (_images, "training.batch_size", -8, "training.batch_size must be an integer >= 0"),
    (_features, "training.num_steps", -1, "training.num_steps must be an integer >= 0"),
    (_features, "training.log_every", 0, "training.log_every must be an integer >= 1"),
    (_features, "training.checkpoint_every", -5, "training.checkpoint_every must be an integer >= 1"),
    (_features, "training.max_to_keep", 0, "training.max_to_keep must be an integer >= 1"),
    (_features, "training.steps_per_call", 0, "training.steps_per_call must be an integer >= 1"),
    (_features, "training.eval_every", -1, "training.eval_every must be an integer >= 0"),
    (_features, "training.eval_every_epochs", -1, "training.eval_every_epochs must be an integer >= 0"),
    (_features, "training.select_from_epoch", 1.5, "training.select_from_epoch must be an integer >= 0"),
    (_features, "training.progress_bar", "maybe", "training.progress_bar must be one of"),
    (_features, "model.exclusive_width", 0, "model.exclusive_width must be an integer >= 1"),
    (_features, "model.shared_dim", -4, "model.shared_dim must be an integer >= 1"),
    (_features, "model.x_dim", 0, "model.x_dim must be an integer >= 1"),
    (_features, "model.shared_posterior", "mixture", "model.shared_posterior must be one of ['joint', 'poe']"),
    (_features, "model.num_classes", -1, "model.num_classes must be an integer >= 0"),
    (_images, "model.architecture", "transformer", "model.architecture must be one of"),
    (_images, "model.resolution", 24, "model.resolution must be a power of two"),
    (_images, "model.latent_resolution", 3, "model.latent_resolution must be a power of two"),
    (_images, "model.latent_resolution", 8, "model.resolution must be at least 4 x model.latent_resolution"),
    (_images, "model.dropout_rate", 1.0, "model.dropout_rate must be in [0, 1)"),
    (_images, "model.channels", 0, "model.channels must be an integer >= 1"),
    (_features, "distributed.heartbeat_timeout_seconds", 0, "distributed.heartbeat_timeout_seconds must be an integer >= 1"),
    (_features, "distributed.process_id", 2, "distributed.process_id must be < distributed.num_processes (1)"),
    # Checked before anything is written: numpy's generators refuse a negative seed at step 1.
    (_images, "seed", -1, "seed must be an integer in [0, 2**32), got -1"),
    (_features, "seed", 2 ** 32 + 5, "seed must be an integer in [0, 2**32)"),
    (_images, "training.batch_size", 0, "training.batch_size must be >= 1 for the paired dataset 'digits_cdcb'"),
    (_features, "data.flip", True, "data.flip applies to paired image datasets; 'digits_zs' is zero-shot"),
]


def _training(config):
  from iiae_jax.config import TrainingConfig
  return TrainingConfig.from_mapping(config.training)


def _set(config, path, value):
  *groups, field = path.split(".")
  node = config
  for g in groups:
    node = node[g]
  with node.ignore_type():
    node[field] = value


@pytest.mark.parametrize("make,path,value,message", BAD_VALUES,
                         ids=[f"{p}={v}" for _, p, v, _ in BAD_VALUES])
def test_an_impossible_value_is_refused_naming_the_field(make, path, value, message):
  config = make()
  validate_config(config)                     # valid before the change
  _set(config, path, value)
  with pytest.raises(ConfigError) as e:
    validate_config(config)
  assert message in str(e.value)


def test_a_split_the_dataset_lacks_is_named_by_its_field():
  config = _features()                             # digits_zs: train and test
  config.data.valid_split = "valid"
  config.evals.zs = dict(type="zs_retrieval", split="tst", ks=(5,))
  with pytest.raises(ConfigError) as e:
    validate_config(config)
  assert "data.valid_split must be one of ['train', 'test'] (the splits of digits_zs), got 'valid'" in str(e.value)
  assert "evals.zs.split must be one of ['train', 'test'] (the splits of digits_zs), got 'tst'" in str(e.value)


def test_a_missing_required_field_is_named():
  config = _images()
  del config.model["exclusive_width"]
  with pytest.raises(ConfigError, match=r"model.exclusive_width is missing \(it must be an integer >= 1\)"):
    validate_config(config)


def test_neither_num_steps_nor_num_epochs_is_refused():
  config = _features()
  config.training.num_steps = 0
  config.training.num_epochs = 0
  with pytest.raises(ConfigError, match=r"training.num_steps or training.num_epochs must be > 0"):
    validate_config(config)


@pytest.mark.parametrize("entry,message", [
    (dict(type="zs_retrieval", ks=(0, 5)), "evals.bad.ks must hold positive integers"),
    (dict(type="zs_retrieval", ks=(-100,)), "evals.bad.ks must hold positive integers"),
    (dict(type="zs_retrieval", ks=(2.5,)), "evals.bad.ks must hold positive integers"),
    (dict(type="no_such_eval"), "evals.bad.type is 'no_such_eval'; known evaluator types"),
    (dict(type="paired_retrieval", batch_size=0), "evals.bad.batch_size must be a positive integer"),
    (dict(type="translation_grid", num_examples=0), "evals.bad.num_examples must be an integer >= 1"),
    (dict(type="paired_retrieval", colour="red"), "evals.bad (paired_retrieval): unknown field(s) ['colour']"),
])
def test_an_impossible_evals_entry_is_refused_naming_it(entry, message):
  config = _features()
  config.evals = ml_collections.ConfigDict({"bad": entry})
  with pytest.raises(ConfigError) as e:
    validate_config(config)
  assert message in str(e.value)


def test_a_selection_epoch_after_the_last_epoch_is_refused():
  config = _features()
  config.training.update(num_steps=0, num_epochs=10, select_from_epoch=11)
  with pytest.raises(ConfigError, match=r"training.select_from_epoch = 11 is after the last epoch \(training.num_epochs = 10\)"):
    validate_config(config)


def test_evaluating_by_steps_and_by_epochs_at_once_is_refused():
  config = _features()
  config.training.update(eval_every=100, eval_every_epochs=1)
  with pytest.raises(ConfigError, match=r"training.eval_every = 100 and training.eval_every_epochs = 1: set one"):
    validate_config(config)


def test_every_bad_field_is_listed_in_one_error():
  config = _images()
  config.loss.beta = -1.0
  config.model.resolution = 48
  config.training.steps_per_call = 0
  with pytest.raises(ConfigError) as e:
    validate_config(config)
  lines = str(e.value).splitlines()
  assert len(lines) == 4    # the header and one line per field
  assert "loss.beta" in lines[1] and "training.steps_per_call" in lines[2] and "model.resolution" in lines[3]


def test_a_batch_that_does_not_divide_the_devices_is_refused():
  config = _images()
  config.training.batch_size = 12
  validate_config(config, num_devices=4)
  with pytest.raises(ConfigError, match=r"training.batch_size = 12 must be a positive multiple of the "
                                        r"number of devices \(8\)"):
    validate_config(config, num_devices=8)
  config = _features()
  config.training.batch_size = 0            # zero-shot: one pair per class, checked once data is known
  validate_config(config, num_devices=8)


def test_train_and_evaluate_validates_before_creating_the_workdir(tmp_path):
  config = _images()
  config.loss.lam = -1.0
  started = time.process_time()   # this process's CPU time: a busy machine does not count
  with pytest.raises(ConfigError, match=r"loss.lam must be >= 0, got -1.0"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()    # nothing created, nothing loaded
  assert time.process_time() - started < 5


def test_evaluate_checkpoint_validates_before_reading_the_workdir(tmp_path):
  config = _images()
  config.evals = ml_collections.ConfigDict({"zs": dict(type="zs_retrieval", ks=(0,))})
  with pytest.raises(ConfigError, match=r"evals.zs.ks must hold positive integers"):
    evaluate.evaluate_checkpoint(config, str(tmp_path / "nowhere"), echo=None)
  assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_train_py_refuses_an_impossible_value_naming_the_field(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config=" + os.path.join(ROOT, "configs/digits_cdcb.py"),
         f"--workdir={workdir}", "--config.loss.beta=-1", "--config.model.resolution=48",
         "--config.evals.translation_grid.num_examples=0"]
  proc = run(cmd, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
  assert proc.returncode != 0
  # One error lists them all, the evals entry's too (train.py builds the evaluators after validating).
  assert "loss.beta must be >= 0, got -1.0" in proc.stderr
  assert "model.resolution must be a power of two" in proc.stderr
  assert "evals.translation_grid.num_examples must be an integer >= 1, got 0" in proc.stderr
  assert not workdir.exists()



@pytest.mark.parametrize("name,dataset,batch,select_from_epoch", [
    ("sketchy", "sketchy", 100, 0), ("mnist_cdcb", "mnist_cdcb", 8, 6), ("facades", "facades", 8, 299),
    ("maps", "maps", 8, 399), ("cars", "cars", 8, 0)])
def test_every_dataset_config_names_its_dataset_and_the_spec_batch(name, dataset, batch, select_from_epoch):
  """docs/method.md §4's table: each config reads its own dataset at the paper's batch size, trains the
  reference's steps and selects checkpoints from the paper's epoch on, evaluating every
  save_freq steps of the reference."""
  import importlib
  from iiae_jax import data, models
  config = importlib.import_module(f"configs.{name}").get_config()
  validate_config(config, num_devices=1)
  assert config.data.name == dataset and dataset in data.DATASETS
  assert config.training.batch_size == batch
  assert config.training.select_from_epoch == select_from_epoch
  if select_from_epoch:
    assert config.training.eval_every == {"mnist_cdcb": 5000, "facades": 100, "maps": 137}[name]
    assert "paired_retrieval" in config.evals
    # Selection on the validation split during training; eval.py reports the test split (§5b).
    assert config.data.valid_split == "valid" and config.evals.paired_retrieval.split == "test"
  if config.model.architecture != "features":
    assert models.input_shapes(config.model)[0] == (config.data.options.resolution,) * 2 + (3,)
  for spec in config.evals.values():
    assert spec["split"] in data.DATASETS[dataset].splits
  assert config.training.keep_every_epochs == (50 if name == "cars" else 0)   # docs/method.md §4 Cars
  # The reference trains every image dataset 1,012,000 steps (run_cross_vae.py's max_steps).
  # Cars: 500 epochs, every 50th kept (the reference's 1,012,000 steps at 2,024 per epoch).
  assert (config.training.num_steps, config.training.num_epochs) == {
      "sketchy": (0, 10), "cars": (0, 500)}.get(name, (1_012_000, 0))


@pytest.mark.parametrize("split,num_classes", [("1", 100), ("2", 104)])
def test_each_sketchy_split_config_takes_one_pair_per_training_class(split, num_classes):
  """docs/method.md §4/§5a: the batch is one pair per training class (100 on split 1, 104 on split 2);
  the class-balanced input refuses any other batch, so a wrong config fails before training."""
  import numpy as np
  from configs import sketchy
  from iiae_jax import input_pipeline
  from iiae_jax.data.types import ZeroShotData
  config = sketchy.get_config(split)
  validate_config(config, num_devices=1)
  assert config.model.num_classes == num_classes
  labels = np.arange(2 * num_classes, dtype=np.int32) % num_classes
  features = np.ones((len(labels), 512), np.float32)
  data = ZeroShotData("sketchy", "train", features, labels, features, labels,
                      [f"class_{c}" for c in range(num_classes)])
  pipeline = input_pipeline.ZeroShotInput(config, data)
  assert pipeline.global_batch == num_classes and pipeline.steps_per_epoch == 2


def test_an_unknown_dataset_is_refused_listing_the_known_ones(tmp_path):
  from iiae_jax import data
  config = _features()
  config.data.name = "nope"
  config.loss.beta = -1.0
  with pytest.raises(ConfigError) as e:
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(e.value)
  assert f"data.name must be one of {sorted(data.DATASETS)}, got 'nope'" in message
  assert "loss.beta must be >= 0" in message          # with every other bad field
  assert not (tmp_path / "run").exists()              # no workdir, no .lock
  del config.data["name"]
  with pytest.raises(ConfigError, match=r"data.name is missing \(it must be one of \["):
    validate_config(config)


# (config, data.source, options: a bad one first, the options the loader accepts)
BAD_OPTIONS = [
    ("digits_zs", "files", dict(resolution=16), ["seed"]),
    ("digits_cdcb", "files", dict(colour="red", seed=1), ["resolution", "seed", "copies"]),
    ("sketchy", "files", dict(sketchy_splt=2), ["sketchy_split", "feature_dim"]),
    ("facades", "files", dict(name="maps"), ["resolution", "verify", "cache_size", "num_threads"]),
    ("digits_zs", "tfds", dict(copies=2, max_examples=5),
     ["download_and_prepare", "manual_dir", "resolution", "cache_size", "lazy", "seed", "max_examples"]),
    ("facades", "tfds", dict(verify=False), ["download_and_prepare", "manual_dir", "resolution",
                                             "cache_size", "lazy"]),
]


@pytest.mark.parametrize("name,source,options,accepted", BAD_OPTIONS,
                         ids=[f"{n}-{s}-{next(iter(o))}" for n, s, o, _ in BAD_OPTIONS])
def test_an_option_the_loader_does_not_take_is_refused_naming_it(name, source, options, accepted):
  config = importlib.import_module(f"configs.{name}").get_config()
  config.data.source = source
  config.data.options = ml_collections.ConfigDict(options)
  with pytest.raises(ConfigError) as e:
    validate_config(config)
  bad = next(iter(options))
  lines = [line.strip() for line in str(e.value).splitlines()[1:]]
  assert lines == [f"data.options.{bad} is not an option of dataset {name!r} (data.source = "
                   f"{source!r}); it accepts {accepted}"]


def test_every_bad_option_is_listed_in_one_error():
  config = _images()                                   # digits_cdcb
  config.data.options.update(size=16, colour="red")
  config.data.options.resolution = 16
  config.loss.beta = -1.0
  with pytest.raises(ConfigError) as e:
    validate_config(config)
  message = str(e.value)
  assert "loss.beta" in message and "data.options.size" in message and "data.options.colour" in message
  assert "data.options.resolution" not in message


def test_a_dataset_without_a_tfds_builder_is_refused_with_source_tfds():
  config = importlib.import_module("configs.sketchy").get_config()
  config.data.update(name="synthetic_sketchy", source="tfds")
  with pytest.raises(ConfigError, match=r"data.name = 'synthetic_sketchy' cannot be read with "
                                        r"data.source = 'tfds': no TFDS builder"):
    validate_config(config)


@pytest.mark.parametrize("split", ["1", "2"])
def test_the_sketchy_configs_run_on_synthetic_sketchy(split):
  """`--config.data.name=synthetic_sketchy` on configs/sketchy.py: its options (sketchy_split) are
  the stand-in's too, and the stand-in has that split's classes (one pair each per batch)."""
  from iiae_jax import data as data_lib
  config = importlib.import_module("configs.sketchy").get_config(split)
  config.data.name = "synthetic_sketchy"
  config.data.options.feature_dim = 8                  # small, for speed
  validate_config(config, num_devices=1)
  for data_split, unseen in (("train", False), ("test", True)):
    data = data_lib.load_split(config.data, data_split)
    classes = {"1": (100, 25), "2": (104, 21)}[split][unseen]
    assert data.num_classes == classes and data.sketch.shape[1] == 8
  assert config.training.batch_size == config.model.num_classes == {"1": 100, "2": 104}[split]


def test_both_lengths_set_warns_which_one_decides(caplog):
  """num_steps > 0 wins; a num_epochs set beside it (e.g. on an image config that trains the
  reference's steps) is named as ignored instead of silently."""
  config = _features()
  config.training.update(num_steps=30, num_epochs=5)
  with caplog.at_level("WARNING"):
    assert schedule.total_steps(_training(config), 7) == 30
  assert "training.num_epochs = 5 (35 steps) is ignored" in caplog.text
  caplog.clear()
  config.training.num_epochs = 0
  with caplog.at_level("WARNING"):
    assert schedule.total_steps(_training(config), 7) == 30
  assert not caplog.text


@pytest.mark.slow
def test_a_field_under_its_former_name_is_refused_naming_the_new_one(tmp_path):
  """The reference's flag names (neef, nsef, exdim, shdim, ndf) were renamed: a config or a
  command line that still uses one is refused with the field to set instead."""
  config = _images()
  with config.model.unlocked():
    config.model.neef = config.model.exclusive_width
    del config.model["exclusive_width"]
  with pytest.raises(ConfigError) as e:
    validate_config(config)
  assert "model.neef was renamed model.exclusive_width: set model.exclusive_width instead" in str(e.value)
  assert "model.exclusive_width is missing" not in str(e.value)
  workdir = tmp_path / "run"
  cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config=" + os.path.join(ROOT, "configs/digits_cdcb.py"),
         f"--workdir={workdir}", "--config.model.ndf=8"]
  proc = run(cmd, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert ("train.py: error: --config.model.ndf: model.ndf was renamed model.decoder_width: use "
          "--config.model.decoder_width") in proc.stderr
  assert not workdir.exists()
