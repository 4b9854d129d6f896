"""The typed groups of a config: `ModelConfig`, `LossConfig`, `OptimizerConfig`, ...

Config files (`configs/*.py`, `iiae_jax.recipes`) are `ml_collections`
ConfigDicts, so that any field can be overridden on the command line. Each
group is turned once into a frozen dataclass here, and the dataclass is the
one place that knows the group's fields, their defaults and their rules:

    ModelConfig.from_mapping(config.model)      # checked: every bad field named
    LossConfig(beta=0.2, recon_weight=1000.0)   # direct construction is checked too

Every rule failure is collected and raised as one `ConfigError` that names
each field ("loss.beta must be >= 0, got -1.0"). Fields renamed from the
reference's flag names (`neef` -> `exclusive_width`, ...) are refused with
the new name. `iiae_jax.run_config.parse` assembles the groups of a whole run.
"""
import dataclasses
import math
import numbers
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from iiae_jax import data as data_lib
from iiae_jax.errors import ConfigError

ARCHITECTURES = ("features", "spatial", "flat")
SHARED_POSTERIORS = ("joint", "poe")
RECON_KINDS = ("l1", "l2")
DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam",)
PROGRESS_BARS = ("auto", "on", "off")
DATA_SOURCES = ("files", "tfds")

# The reference's flag names and ours (docs/method.md lists them with their meaning).
RENAMED = {
    "model.neef": "model.exclusive_width",
    "model.nsef": "model.shared_width",
    "model.exdim": "model.exclusive_dim",
    "model.shdim": "model.shared_dim",
    "model.ndf": "model.decoder_width",
}


# ---------------------------------------------------------------------------
# Rules: (predicate, what the value must be), attached to each field.

Rule = Tuple[Callable[[Any], bool], str]


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def int_at_least(low: int) -> Rule:
  return (lambda v: _is_int(v) and v >= low), f"be an integer >= {low}"


def real_at_least(low: float, strict: bool = False) -> Rule:
  return ((lambda v: _is_real(v) and (v > low if strict else v >= low)),
          f"be {'>' if strict else '>='} {low}")


def in_unit_interval() -> Rule:
  return (lambda v: _is_real(v) and 0 <= v < 1), "be in [0, 1)"


def one_of(choices) -> Rule:
  return (lambda v: v in choices), f"be one of {list(choices)}"


def boolean() -> Rule:
  return (lambda v: isinstance(v, bool)), "be True or False"


def power_of_two(example: str) -> Rule:
  return (lambda v: _is_int(v) and v > 0 and v & (v - 1) == 0), f"be a power of two (e.g. {example})"


def text() -> Rule:
  return (lambda v: isinstance(v, str)), "be a string"


def mapping() -> Rule:
  return (lambda v: hasattr(v, "keys")), "be a mapping of names to values"


_REQUIRED = dataclasses.MISSING


def field(default=_REQUIRED, rule: Optional[Rule] = None, doc: str = ""):
  """A config field: its default (none: required), its rule and a one-line meaning."""
  kwargs = {"default": default} if default is not _REQUIRED else {}
  if isinstance(default, (dict, list)):
    kwargs = {"default_factory": lambda: type(default)(default)}
  return dataclasses.field(**kwargs, metadata={"rule": rule, "doc": doc})


class Errors:
  """The messages of one config check, in the order the fields are checked."""

  def __init__(self):
    self.messages: List[str] = []

  def add(self, message: str) -> None:
    self.messages.append(message)

  def check(self, name: str, value: Any, rule: Optional[Rule]) -> bool:
    if rule is None or value is None:
      return True
    ok, must = rule
    try:
      good = bool(ok(value))
    except (TypeError, ValueError):
      good = False
    if not good:
      self.add(f"{name} must {must}, got {value!r}")
    return good

  def missing(self, name: str, rule: Optional[Rule]) -> None:
    self.add(f"{name} is missing (it must {rule[1]})" if rule else f"{name} is missing")

  def raise_if_any(self) -> None:
    if self.messages:
      raise ConfigError("invalid config:\n  " + "\n  ".join(self.messages), self.messages)


class Group:
  """A frozen group of config fields that checks itself on construction.

  Subclasses are frozen keyword-only dataclasses whose fields come from
  `field(default, rule, doc)`; `cross_checks` adds the rules that relate
  several fields.
  """
  GROUP = ""

  def __post_init__(self):
    errors = Errors()
    self.check_into(errors, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
    errors.raise_if_any()

  @classmethod
  def check_into(cls, errors: Errors, values: Mapping[str, Any]) -> None:
    """Adds a message for every field of `values` (a mapping of this group) that breaks its rule."""
    valid = {}
    for f in dataclasses.fields(cls):
      if f.name not in values:
        continue
      if errors.check(cls._name(f.name), values[f.name], f.metadata["rule"]):
        valid[f.name] = values[f.name]
    cls.cross_checks(errors, valid, values)

  @classmethod
  def cross_checks(cls, errors: Errors, valid: Dict[str, Any], values: Mapping[str, Any]) -> None:
    """Rules over several fields; `valid` holds the fields that passed their own rules."""

  @classmethod
  def _name(cls, field_name: str) -> str:
    return f"{cls.GROUP}.{field_name}" if cls.GROUP else field_name

  @classmethod
  def rule(cls, field_name: str) -> Optional[Rule]:
    return next(f.metadata["rule"] for f in dataclasses.fields(cls) if f.name == field_name)

  @classmethod
  def field_names(cls) -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def from_mapping(cls, values: Optional[Mapping[str, Any]], errors: Optional[Errors] = None):
    """The group that `values` (a ConfigDict group, a dict, or an instance) describes.

    Unknown and renamed fields, missing required ones and every rule broken are
    reported together: added to `errors` (then None is returned when any was
    found), or raised as one ConfigError.
    """
    if isinstance(values, cls):
      return values
    own = errors is None
    errors = Errors() if own else errors
    values = _as_dict(values)
    start = len(errors.messages)
    known = set(cls.field_names())
    renamed_to = set()
    for key in values:
      name = cls._name(key)
      if name in RENAMED:
        errors.add(f"{name} was renamed {RENAMED[name]}: set {RENAMED[name]} instead")
        renamed_to.add(RENAMED[name])
      elif key not in known:
        errors.add(f"{name} is not a field of {cls.GROUP or 'the config'}; its fields are "
                   f"{sorted(known)}")
    for f in dataclasses.fields(cls):
      if (f.name not in values and f.default is _REQUIRED and f.default_factory is _REQUIRED
          and cls._name(f.name) not in renamed_to):
        errors.missing(cls._name(f.name), f.metadata["rule"])
    present = {k: v for k, v in values.items() if k in known}
    cls.check_into(errors, present)
    if len(errors.messages) > start:
      if own:
        errors.raise_if_any()
      return None
    return cls._construct(present)

  @classmethod
  def _construct(cls, present: Dict[str, Any]):
    return cls(**present)

  def to_dict(self) -> Dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _as_dict(values) -> Dict[str, Any]:
  if values is None:
    return {}
  if hasattr(values, "to_dict"):
    return values.to_dict()
  if not hasattr(values, "keys"):
    raise ConfigError(f"a config group must be a mapping of field names to values, got "
                      f"{type(values).__name__}")
  return {k: values[k] for k in values.keys()}


# ---------------------------------------------------------------------------
# The groups


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(Group):
  """`config.model`: the networks of docs/method.md §3.

  Sizes follow the reference's layer widths under names of their own
  (the reference's flag in brackets).
  """
  GROUP = "model"
  architecture: str = field(rule=one_of(ARCHITECTURES),
                            doc="'features' (§3a), 'spatial' (images, spatial z_s, §3b), 'flat' (§3c)")
  exclusive_width: int = field(rule=int_at_least(1), doc="width of the exclusive encoders [neef]")
  shared_width: int = field(rule=int_at_least(1), doc="width of the shared encoders [nsef]")
  exclusive_dim: int = field(rule=int_at_least(1), doc="dimension of z_x and of z_y [exdim]")
  shared_dim: Optional[int] = field(None, int_at_least(1),
                                    "dimension of a flat z_s (features, flat) [shdim]; a spatial z_s "
                                    "has channels from shared_width")
  decoder_width: int = field(rule=int_at_least(1), doc="width of the decoders [ndf]")
  x_dim: Optional[int] = field(None, int_at_least(1), "features: width of an x feature vector")
  y_dim: Optional[int] = field(None, int_at_least(1), "features: width of a y feature vector")
  resolution: Optional[int] = field(None, power_of_two("32, 64, 256"), "images: height = width")
  channels: Optional[int] = field(None, int_at_least(1), "images: colour channels")
  latent_resolution: int = field(8, power_of_two("4, 8"), "images: side of the latent grid")
  channel_cap: int = field(8, int_at_least(1), "images: largest channel multiplier of a stage")
  dropout_rate: float = field(0.5, in_unit_interval(), "images: decoder dropout (training only)")
  shared_posterior: str = field("joint", one_of(SHARED_POSTERIORS),
                                "q(z_s|x,y): 'joint' network or 'poe' product of experts")
  prior_expert: bool = field(True, boolean(), "poe: the prior N(0, I) joins the product")
  num_classes: int = field(0, int_at_least(0), "classes of the optional classifier on z_s (0: none)")
  output_relu: bool = field(False, boolean(), "features: ReLU on the decoders' outputs")
  dtype: str = field("float32", one_of(DTYPES), "compute dtype (parameters stay float32)")

  @classmethod
  def cross_checks(cls, errors, valid, values):
    arch = valid.get("architecture")
    if arch is None:
      return
    needed = ("x_dim", "y_dim") if arch == "features" else ("resolution", "channels")
    for name in needed + (("shared_dim",) if arch != "spatial" else ()):
      if values.get(name) is None:
        errors.missing(f"model.{name}", cls.rule(name))
    resolution = valid.get("resolution")
    latent = valid.get("latent_resolution", None if "latent_resolution" in values else 8)
    if arch != "features" and resolution and latent and resolution < 4 * latent:
      errors.add(f"model.resolution must be at least 4 x model.latent_resolution (two "
                 f"down-sampling stages), got {resolution} and {latent}")

  @property
  def input_shapes(self) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The per-example shapes of x and y."""
    if self.architecture == "features":
      return (self.x_dim,), (self.y_dim,)
    image = (self.resolution, self.resolution, self.channels)
    return image, image


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig(Group):
  """`config.loss`: the weights of the objective (docs/method.md §2); defaults: the Sketchy recipe."""
  GROUP = "loss"
  beta: float = field(0.5, real_at_least(0), "β: weight of the KL terms to the prior")
  lam: float = field(1.0, real_at_least(0), "λ: weight of the interaction-information terms")
  recon_weight: float = field(10.0, real_at_least(0), "scale of the reconstruction errors")
  recon: str = field("l2", one_of(RECON_KINDS), "'l1' (images) or 'l2' (feature vectors)")
  annealing_rate: float = field(2000.0, real_at_least(0, strict=True), "ar of c(t) = 1 - exp(-t / ar)")
  class_weight: float = field(0.0, real_at_least(0), "w_c: weight of the optional class term")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig(Group):
  """`config.optimizer`: Adam (docs/method.md §4)."""
  GROUP = "optimizer"
  name: str = field("adam", one_of(OPTIMIZERS), "the paper's optimiser")
  learning_rate: float = field(rule=real_at_least(0, strict=True), doc="Adam's step size")
  b1: float = field(0.5, in_unit_interval(), "Adam's β1")
  b2: float = field(0.999, in_unit_interval(), "Adam's β2")
  eps: float = field(1e-8, real_at_least(0, strict=True), "Adam's ε")
  flatten: bool = field(False, boolean(), "update one concatenated vector instead of each array")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingConfig(Group):
  """`config.training`: the run's length and intervals."""
  GROUP = "training"
  batch_size: int = field(rule=int_at_least(0),
                          doc="global batch over every device of every host; zero-shot 0: one pair "
                              "per training class")
  num_steps: int = field(0, int_at_least(0), "steps to train; 0: num_epochs epochs")
  num_epochs: int = field(0, int_at_least(0), "epochs to train, when num_steps is 0")
  steps_per_call: int = field(1, int_at_least(1), "optimiser steps per compiled call (lax.scan)")
  resident_data: bool = field(True, boolean(), "keep the training set on the accelerator when it fits")
  log_every: int = field(rule=int_at_least(1), doc="steps between log lines")
  checkpoint_every: int = field(rule=int_at_least(1), doc="steps between checkpoints")
  max_to_keep: int = field(2, int_at_least(1), "newest checkpoints kept")
  keep_every_epochs: int = field(0, int_at_least(0), "> 0: also keep every checkpoint at a multiple "
                                                     "of this many epochs")
  eval_every: int = field(0, int_at_least(0), "steps between evaluations; 0: only at the end")
  eval_every_epochs: int = field(0, int_at_least(0), "epochs between evaluations, instead of eval_every")
  select_from_epoch: int = field(0, int_at_least(0), "evaluations before the end of this epoch do "
                                                     "not compete for <workdir>/best")
  progress_bar: str = field("auto", one_of(PROGRESS_BARS), "'auto' (a terminal), 'on' or 'off'")
  preemption_grace_seconds: int = field(20, int_at_least(1), "after SIGTERM, an evaluation that has "
                                                             "not stopped by then is cut short (its "
                                                             "state saved, the rerun redoes it)")

  @classmethod
  def cross_checks(cls, errors, valid, values):
    # An absent length is 0; an invalid one (None here) was reported already.
    steps = valid.get("num_steps", None if "num_steps" in values else 0)
    epochs = valid.get("num_epochs", None if "num_epochs" in values else 0)
    if steps == 0 and epochs == 0:
      errors.add("training.num_steps or training.num_epochs must be > 0, got both 0")
    every, every_epochs = valid.get("eval_every"), valid.get("eval_every_epochs")
    if every and every_epochs:
      errors.add(f"training.eval_every = {every} and training.eval_every_epochs = {every_epochs}: "
                 "set one of them (the other to 0)")
    select_from = valid.get("select_from_epoch")
    if select_from and steps == 0 and epochs and select_from > epochs:
      errors.add(f"training.select_from_epoch = {select_from} is after the last epoch "
                 f"(training.num_epochs = {epochs})")

  def num_steps_for(self, steps_per_epoch: int) -> int:
    """num_steps if > 0, else num_epochs epochs of `steps_per_epoch` steps."""
    return self.num_steps if self.num_steps > 0 else self.num_epochs * steps_per_epoch


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(Group):
  """`config.data`: which dataset, where it lives and how it is read (`iiae_jax.data.load`)."""
  GROUP = "data"
  name: str = field(rule=one_of(sorted(data_lib.DATASETS)), doc="a dataset of iiae_jax.data.DATASETS")
  data_dir: str = field("", text(), "the datasets' folder; '': $IIAE_DATA_DIR, else ./data")
  source: str = field("files", one_of(DATA_SOURCES), "'files' (the release's layouts) or 'tfds'")
  train_split: str = field("train", text(), "the split trained on")
  valid_split: str = field("", text(), "the split evaluated during training; '': each evals entry's own")
  flip: bool = field(False, boolean(), "paired images: flip x and y horizontally together")
  options: Dict[str, Any] = field({}, mapping(), "the dataset's own options (iiae_jax.data.DATASETS)")

  @classmethod
  def cross_checks(cls, errors, valid, values):
    name = valid.get("name")
    if name is None:
      return
    info = data_lib.DATASETS[name]
    source = valid.get("source", None if "source" in values else "files")
    if source is not None:
      try:
        accepted = data_lib.loader_options(name, source)
      except ValueError as e:  # no TFDS builder for this dataset
        errors.add(f"data.name = {name!r} cannot be read with data.source = {source!r}: {e}")
      else:
        for option in valid.get("options") or {}:
          if option not in accepted:
            errors.add(f"data.options.{option} is not an option of dataset {name!r} (data.source = "
                       f"{source!r}); it accepts {list(accepted)}")
    if info.kind == "zero_shot" and valid.get("flip"):
      errors.add(f"data.flip applies to paired image datasets; {name!r} is zero-shot "
                 "(feature vectors): set it to False")
    # Every split a run reads, by the field that names it (a typo fails now, not an epoch later).
    for split_field in ("train_split", "valid_split"):
      value = valid.get(split_field)
      if value is not None and value not in info.splits and not (split_field == "valid_split" and value == ""):
        errors.add(f"data.{split_field} must {cls.split_rule(name)[1]}, got {value!r}")

  @staticmethod
  def split_rule(name: str) -> Rule:
    splits = data_lib.DATASETS[name].splits
    return (lambda v: v in splits), f"be one of {list(splits)} (the splits of {name})"

  @property
  def kind(self) -> str:
    """'paired' (image pairs) or 'zero_shot' (class-level sketch/photo features)."""
    return data_lib.DATASETS[self.name].kind

  @classmethod
  def _construct(cls, present):
    return cls(**dict(present, options=_as_dict(present.get("options"))))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig(Group):
  """`config.distributed`: several hosts (`jax.distributed`)."""
  GROUP = "distributed"
  enabled: bool = field(False, boolean(), "start jax.distributed (one process per host)")
  coordinator_address: str = field("", text(), "host:port of process 0; '': detected (TPU, SLURM, MPI)")
  num_processes: int = field(1, int_at_least(1), "processes of the run")
  process_id: int = field(0, int_at_least(0), "this process's index")
  heartbeat_timeout_seconds: int = field(60, int_at_least(1), "a process whose peer has been silent "
                                                              "this long stops with an error")
  shutdown_timeout_seconds: int = field(300, int_at_least(1), "how long a finished process waits at "
                                                              "exit for the others")
  step_timeout_seconds: int = field(1800, int_at_least(1), "a process that makes no progress this long "
                                                           "stops (training calls: less, once measured)")

  @classmethod
  def cross_checks(cls, errors, valid, values):
    n, pid = valid.get("num_processes"), valid.get("process_id")
    if n is not None and pid is not None and pid >= n:
      errors.add(f"distributed.process_id must be < distributed.num_processes ({n}), got {pid}")


def defaults(group) -> Dict[str, Any]:
  """{field: default} of a group's optional fields (what recipes start from)."""
  out = {}
  for f in dataclasses.fields(group):
    if f.default is not _REQUIRED:
      out[f.name] = f.default
    elif f.default_factory is not _REQUIRED:
      out[f.name] = f.default_factory()
  return out


def describe(group) -> List[Tuple[str, Any, str]]:
  """(field, default or 'required', meaning) of each field of a group (for the docs)."""
  rows = []
  for f in dataclasses.fields(group):
    default = "required" if f.default is _REQUIRED and f.default_factory is _REQUIRED else \
        (f.default if f.default is not _REQUIRED else f.default_factory())
    rows.append((f.name, default, f.metadata["doc"]))
  return rows
