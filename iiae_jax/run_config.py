"""A whole run's config, checked once: `parse(config) -> RunConfig`.

`parse` turns the groups of a config file into the typed groups of
`iiae_jax.config` and checks what relates them to the rest of the package:
the dataset (its name, options and splits) and every `config.evals` entry (its
evaluator type and options). Every bad field of every group is named in one
`ConfigError`, before anything loads or compiles. `train.py` and `eval.py`
parse once; the loop and the evaluation take the `RunConfig`.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional

import ml_collections

from iiae_jax import data as data_lib
from iiae_jax import parallel
from iiae_jax.config import (DataConfig, DistributedConfig, Errors, LossConfig, ModelConfig,
                             OptimizerConfig, TrainingConfig, int_at_least)
from iiae_jax.errors import ConfigError
from iiae_jax.evaluation import evaluators

GROUPS = ("seed", "data", "model", "loss", "optimizer", "training", "evals", "distributed")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Every group of a run's config, checked (see `parse`)."""
  seed: int
  data: DataConfig
  model: ModelConfig
  loss: LossConfig
  optimizer: OptimizerConfig
  training: TrainingConfig
  distributed: DistributedConfig
  evals: Dict[str, Dict[str, Any]]   # name -> entry (its type and options), as given
  tree: Dict[str, Any]               # the config as given (config.json)

  @property
  def record(self) -> Dict[str, Any]:
    """The config as given, flattened: what checkpoints record and resuming compares."""
    return flatten_config(self.tree)


def flatten_config(config) -> Dict[str, Any]:
  """{"model.exclusive_width": 32, ...}: a config's fields by their dotted names (tuples as lists)."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        walk(name + ".", value)
      else:
        out[name] = list(value) if isinstance(value, tuple) else value
  walk("", config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config)
  return out


def _group(config, name: str):
  node = config.get(name) if hasattr(config, "get") else None
  return node if node is not None else {}


def parse(config, *, num_devices: Optional[int] = None) -> RunConfig:
  """The RunConfig of `config` (a ConfigDict or dict of groups; a RunConfig is returned as is).

  Checks, naming every bad field at once: the loss weights, the optimiser,
  the training lengths and intervals, the model sizes, the dataset (data.name
  known, every data.options key one of its options for data.source, every
  split a run reads one of its splits), the distributed group and every evals
  entry (type known, options valid). With `num_devices`, also that
  training.batch_size divides over that many devices. Cheap: no data is read,
  nothing compiles.
  """
  if isinstance(config, RunConfig):
    if num_devices is not None and config.training.batch_size:
      parallel.check_batch_size(config.training.batch_size, num_devices)
    return config
  errors = Errors()
  unknown = sorted(set(config.keys()) - set(GROUPS)) if hasattr(config, "keys") else []
  for name in unknown:
    errors.add(f"{name} is not a config group; the groups are {list(GROUPS)}")
  seed = config.get("seed", 0) if hasattr(config, "get") else 0
  # numpy's generators take no negative seed, and JAX keys (32-bit) would equate s and s + 2**32.
  errors.check("seed", seed, (lambda v: int_at_least(0)[0](v) and v < 2 ** 32, "be an integer in [0, 2**32)"))
  groups = {}
  for cls in (LossConfig, OptimizerConfig, TrainingConfig, ModelConfig, DataConfig):
    groups[cls.GROUP] = cls.from_mapping(_group(config, cls.GROUP), errors)
  _check_data_use(errors, _group(config, "data"), groups["training"], _group(config, "evals"))
  groups["distributed"] = DistributedConfig.from_mapping(_group(config, "distributed"), errors)
  evals = _check_evals(errors, _group(config, "evals"))
  training = groups["training"]
  if num_devices is not None and training is not None and training.batch_size:  # 0: known later
    try:
      parallel.check_batch_size(training.batch_size, num_devices)
    except ConfigError as e:
      errors.add(str(e))
  errors.raise_if_any()
  tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return RunConfig(seed=int(seed), evals=evals, tree=tree, **groups)


def validate_config(config, *, num_devices: Optional[int] = None) -> None:
  """Raises ConfigError naming every field of `config` that holds an impossible value (`parse`)."""
  parse(config, num_devices=num_devices)


def _check_data_use(errors: Errors, data: Mapping[str, Any], training: Optional[TrainingConfig],
                    evals: Mapping[str, Any]) -> None:
  """What the training and evals groups ask of the dataset `data.name` (when it is one)."""
  name = data.get("name")
  if name not in data_lib.DATASETS:
    return
  if data_lib.DATASETS[name].kind == "paired" and training is not None and training.batch_size == 0:
    errors.add(f"training.batch_size must be >= 1 for the paired dataset {name!r} (0, one "
               "pair per class, is for zero-shot datasets)")
  rule = DataConfig.split_rule(name)
  for entry_name, entry in evals.items():
    for field in [f for f in (entry.keys() if hasattr(entry, "keys") else ()) if f.endswith("split")]:
      errors.check(f"evals.{entry_name}.{field}", entry[field], rule)


def _check_evals(errors: Errors, evals: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
  checked = {}
  for name, entry in evals.items():
    entry = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)
    try:
      evaluators.make_evaluator(name, entry, embedder=None)  # checks type and options; loads nothing
    except (ValueError, TypeError) as e:
      errors.add(str(e))
    checked[name] = entry
  return checked
