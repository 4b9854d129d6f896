"""Start-up checks of a config: every field, before any data loading or compilation.

`validate_config(config)` raises one `ConfigError` that lists every impossible
value, each by its field name ("loss.beta must be >= 0, got -1"), so that a
typo costs seconds instead of a failed job after the data has loaded and the
step has compiled. Optional fields that are absent keep their defaults;
required ones (model sizes, the optimiser's learning rate, ...) are reported
missing; unknown fields are left to the code that reads them.
"""
import math
import os
import numbers
from typing import Any, Callable, List, Optional

from iiae_jax.models import ARCHITECTURES, SHARED_POSTERIORS

RECON_KINDS = ("l1", "l2")
DTYPES = ("float32", "bfloat16")
PROGRESS_BARS = ("auto", "on", "off")
DATA_SOURCES = ("files", "tfds")


class ConfigError(ValueError):
  """One or more config fields hold impossible values; the message names each field."""


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_power_of_two(v: int) -> bool:
  return v > 0 and v & (v - 1) == 0


class _Checker:
  """Collects one message per bad field."""

  def __init__(self, config):
    self.config = config
    self.errors: List[str] = []

  def group(self, name: str):
    node = self.config.get(name) if hasattr(self.config, "get") else None
    return node if node is not None else {}

  def check(self, group: str, field: str, ok: Callable[[Any], bool], must: str,
            required: bool = False) -> Optional[Any]:
    """Checks `config.<group>.<field>` with `ok`; returns the value when present and valid."""
    node = self.group(group) if group else self.config
    name = f"{group}.{field}" if group else field
    if field not in node or node[field] is None:
      if required:
        self.errors.append(f"{name} is missing (it must {must})")
      return None
    value = node[field]
    try:
      good = ok(value)
    except (TypeError, ValueError):
      good = False
    if not good:
      self.errors.append(f"{name} must {must}, got {value!r}")
      return None
    return value

  # Shorthands for the common rules.
  def int_at_least(self, group, field, low, required=False):
    return self.check(group, field, lambda v: _is_int(v) and v >= low,
                      f"be an integer >= {low}", required)

  def real_at_least(self, group, field, low, strict=False, required=False):
    op = ">" if strict else ">="
    return self.check(group, field,
                      lambda v: _is_real(v) and (v > low if strict else v >= low),
                      f"be {op} {low}", required)

  def one_of(self, group, field, choices, required=False):
    return self.check(group, field, lambda v: v in choices, f"be one of {list(choices)}", required)

  def boolean(self, group, field):
    return self.check(group, field, lambda v: isinstance(v, bool), "be True or False")


def _check_loss(c: _Checker) -> None:
  for field in ("beta", "lam", "recon_weight", "class_weight"):
    c.real_at_least("loss", field, 0)
  c.real_at_least("loss", "annealing_rate", 0, strict=True)
  c.one_of("loss", "recon", RECON_KINDS)


def _check_optimizer(c: _Checker) -> None:
  c.one_of("optimizer", "name", ("adam",))
  c.real_at_least("optimizer", "learning_rate", 0, strict=True, required=True)
  for field in ("b1", "b2"):
    c.check("optimizer", field, lambda v: _is_real(v) and 0 <= v < 1, "be in [0, 1)")
  c.real_at_least("optimizer", "eps", 0, strict=True)
  c.boolean("optimizer", "flatten")


def _check_training(c: _Checker) -> None:
  c.int_at_least("training", "batch_size", 0, required=True)
  steps = c.int_at_least("training", "num_steps", 0)
  epochs = c.int_at_least("training", "num_epochs", 0)
  t = c.group("training")
  if steps is not None and epochs is not None and steps == 0 and epochs == 0:
    c.errors.append("training.num_steps or training.num_epochs must be > 0, got both 0")
  elif "num_steps" not in t and "num_epochs" not in t:
    c.errors.append("training.num_steps or training.num_epochs must be set")
  for field in ("log_every", "checkpoint_every", "max_to_keep"):
    c.int_at_least("training", field, 1, required=field != "max_to_keep")
  c.int_at_least("training", "steps_per_call", 1)
  c.int_at_least("training", "keep_every_epochs", 0)
  every = c.int_at_least("training", "eval_every", 0)
  every_epochs = c.int_at_least("training", "eval_every_epochs", 0)
  if every and every_epochs:
    c.errors.append(f"training.eval_every = {every} and training.eval_every_epochs = {every_epochs}: "
                    "set one of them (the other to 0)")
  select_from = c.int_at_least("training", "select_from_epoch", 0)
  if select_from and steps == 0 and epochs and select_from > epochs:
    c.errors.append(f"training.select_from_epoch = {select_from} is after the last epoch "
                    f"(training.num_epochs = {epochs})")
  c.boolean("training", "resident_data")
  c.one_of("training", "progress_bar", PROGRESS_BARS)


def _check_model(c: _Checker) -> None:
  arch = c.one_of("model", "architecture", ARCHITECTURES, required=True)
  sizes = ["neef", "nsef", "exdim", "ndf"] + (["shdim"] if arch != "spatial" else [])
  sizes += ["x_dim", "y_dim"] if arch == "features" else ["channels"]
  for field in sizes:
    c.int_at_least("model", field, 1, required=arch is not None)
  c.one_of("model", "shared_posterior", SHARED_POSTERIORS)
  c.boolean("model", "prior_expert")
  c.int_at_least("model", "num_classes", 0)
  c.one_of("model", "dtype", DTYPES)
  if arch == "features":
    c.boolean("model", "output_relu")
  elif arch is not None:
    c.check("model", "dropout_rate", lambda v: _is_real(v) and 0 <= v < 1, "be in [0, 1)")
    c.int_at_least("model", "channel_cap", 1)
    resolution = c.check("model", "resolution", lambda v: _is_int(v) and _is_power_of_two(v),
                         "be a power of two (e.g. 32, 64, 256)", required=True)
    latent = c.check("model", "latent_resolution", lambda v: _is_int(v) and _is_power_of_two(v),
                     "be a power of two (e.g. 4, 8)")
    latent = 8 if latent is None and "latent_resolution" not in c.group("model") else latent
    if resolution is not None and latent is not None and resolution < 4 * latent:
      c.errors.append(f"model.resolution must be at least 4 x model.latent_resolution (two "
                      f"down-sampling stages), got {resolution} and {latent}")


def _check_data(c: _Checker) -> None:
  from iiae_jax import data  # pylint: disable=g-import-not-at-top
  source = c.one_of("data", "source", DATA_SOURCES)
  c.boolean("data", "flip")
  name = c.one_of("data", "name", sorted(data.DATASETS), required=True)
  if name is None:
    return
  if source is not None or c.group("data").get("source") is None:  # absent: 'files'
    _check_data_options(c, name, source or "files")
  if data.DATASETS[name].kind == "zero_shot":
    if c.group("data").get("flip"):
      c.errors.append(f"data.flip applies to paired image datasets; {name!r} is zero-shot "
                      "(feature vectors): set it to False")
  elif c.group("training").get("batch_size") == 0:
    c.errors.append(f"training.batch_size must be >= 1 for the paired dataset {name!r} (0, one "
                    "pair per class, is for zero-shot datasets)")
  # Every split a run reads, by the field that names it (a typo fails now, not an epoch later).
  splits = data.DATASETS[name].splits
  must = f"be one of {list(splits)} (the splits of {name})"
  for field in ("train_split", "valid_split"):
    c.check("data", field, lambda v: v in splits or (field == "valid_split" and v == ""), must)
  for entry_name, entry in c.group("evals").items():
    entry_fields = entry.keys() if hasattr(entry, "keys") else ()
    for field in [f for f in entry_fields if f.endswith("split")]:
      if entry[field] not in splits:
        c.errors.append(f"evals.{entry_name}.{field} must {must}, got {entry[field]!r}")


def _check_data_options(c: _Checker, name: str, source: str) -> None:
  """Every data.options key must be an argument of the loader that `data.load` calls."""
  from iiae_jax import data  # pylint: disable=g-import-not-at-top
  try:
    accepted = data.loader_options(name, source)
  except ValueError as e:  # no TFDS builder for this dataset
    c.errors.append(f"data.name = {name!r} cannot be read with data.source = {source!r}: {e}")
    return
  for option in c.group("data").get("options") or {}:
    if option not in accepted:
      c.errors.append(f"data.options.{option} is not an option of dataset {name!r} (data.source = "
                      f"{source!r}); it accepts {list(accepted)}")


def _check_distributed(c: _Checker) -> None:
  c.boolean("distributed", "enabled")
  n = c.int_at_least("distributed", "num_processes", 1)
  pid = c.int_at_least("distributed", "process_id", 0)
  if n is not None and pid is not None and pid >= n:
    c.errors.append(f"distributed.process_id must be < distributed.num_processes ({n}), got {pid}")
  for field in ("heartbeat_timeout_seconds", "shutdown_timeout_seconds"):
    c.int_at_least("distributed", field, 1)


def _check_evals(c: _Checker) -> None:
  from iiae_jax.evaluation import evaluators  # pylint: disable=g-import-not-at-top  # imports trainer
  for name, entry in (c.group("evals") or {}).items():
    try:
      # Building an evaluator checks its type and options; it loads no data.
      evaluators.make_evaluator(name, entry, embedder=None)
    except (ValueError, TypeError) as e:
      c.errors.append(str(e))


def validate_config(config, *, num_devices: Optional[int] = None) -> None:
  """Raises ConfigError naming every field of `config` that holds an impossible value.

  Checks loss weights (>= 0, annealing_rate > 0), the optimiser (lr > 0, betas
  in [0, 1)), training lengths and intervals (positive), model sizes (positive
  integers; image resolution a power of two, at least 4 x latent_resolution),
  the dataset (data.name known, every data.options key an argument of its
  loader for data.source) and every split it reads (data.*_split, evals.*.split), the
  distributed group and every evals entry (type known, options valid, e.g. ks
  positive integers). With `num_devices`, also that training.batch_size
  divides over that many devices. Cheap: no data is read, nothing compiles.
  """
  c = _Checker(config)
  # numpy's generators take no negative seed, and JAX keys (32-bit) would equate s and s + 2**32.
  c.check("", "seed", lambda v: _is_int(v) and 0 <= v < 2 ** 32, "be an integer in [0, 2**32)")
  _check_loss(c)
  _check_optimizer(c)
  _check_training(c)
  _check_model(c)
  _check_data(c)
  _check_distributed(c)
  _check_evals(c)
  if num_devices is not None:
    try:
      _check_batch_layout(config, num_devices)
    except ConfigError as e:
      c.errors.append(str(e))
  if c.errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(c.errors))


def _check_batch_layout(config, num_devices: int) -> None:
  """training.batch_size must split evenly over `num_devices` (0: one pair per class, checked later)."""
  batch = config.training.get("batch_size")
  if _is_int(batch) and batch > 0 and batch % num_devices:
    raise ConfigError(f"training.batch_size = {batch} must be a positive multiple of the number of "
                      f"devices ({num_devices})")


def parse_command_line(argv):
  """absl's flag parsing for train.py and eval.py (`app.run(main, flags_parser=...)`), with an
  unknown `--config.<field>` reported in one line instead of ml_collections' traceback."""
  import sys  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  try:
    return app.parse_flags_with_usage(argv)  # absl's own: a bad flag value is one line too
  except (AttributeError, KeyError) as e:
    key = str(e).strip("'\"")
    named = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
             and key in a.split("=")[0].split(".")[1:]]
    where = named[0] if named else "a --config.* override"
    print(f"{os.path.basename(argv[0])}: error: {where}: the config has no field {key!r} (unknown "
          "fields are refused; see the config file and configs/common.py for the fields)",
          file=sys.stderr)
    sys.exit(1)

