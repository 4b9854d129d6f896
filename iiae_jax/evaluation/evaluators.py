"""Evaluators chosen by name from the config (the big_vision pattern).

    config.evals.paired_retrieval = dict(type="paired_retrieval", split="test")
    config.evals.grid = dict(type="translation_grid", split="test", num_examples=8)

Each entry `name: {type, ...}` becomes one small callable object,
`evaluator(model, variables, step, out_dir=None) -> {"<name>/<metric>": value}`.
Datasets are loaded once per `Datasets` and embeddings computed once per
(variables, split, subset), so several evaluators of one split share the work.
"""
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from iiae_jax import data as data_lib
from iiae_jax import metrics as metrics_lib
from iiae_jax.data import PairedData, ZeroShotData
from iiae_jax.evaluation import embed as embed_lib
from iiae_jax.evaluation import grids

# Fields every entry may set, with their defaults.
COMMON_FIELDS = {
    "type": None,
    "split": "test",
    "during_training": None,     # None: the type's default (true except translation_grid)
    "max_examples": 0,           # 0: every example; else a fixed random subset of this size
    "batch_size": embed_lib.DEFAULT_BATCH_SIZE,
}


def describe_dataset(data) -> Dict[str, Any]:
  """Sizes of a loaded split, for reports."""
  if isinstance(data, ZeroShotData):
    return {"kind": "zero_shot", "num_sketches": int(len(data.sketch)),
            "num_photos": int(len(data.photo)), "num_classes": int(data.num_classes)}
  return {"kind": "paired", "num_pairs": int(len(data))}


class Datasets:
  """The splits of `config.data`, each loaded once (`iiae_jax.data.load_split`).

  A lazily decoded split is kept decoded (as uint8) after its first reading when it fits
  KEEP_DECODED_BYTES: a validation split is read at every evaluation of a run.
  """

  KEEP_DECODED_BYTES = 1 << 30  # Maps' 800 validation pairs at 256x256: 315 MB

  def __init__(self, data_config, loader: Optional[Callable[[str], Any]] = None):
    """`data_config`: config.data (a DataConfig, or a ConfigDict group with all its fields)."""
    self._loader = loader or (lambda split: data_lib.load_split(data_config, split))
    self._cache: Dict[str, Any] = {}

  def __call__(self, split: str):
    if split not in self._cache:
      data = self._cache[split] = self._loader(split)
      reader = getattr(getattr(data, "x", None), "reader", None)
      if reader is not None:
        reader.keep_all_decoded(self.KEEP_DECODED_BYTES)
    return self._cache[split]

  def sizes(self) -> Dict[str, Dict[str, Any]]:
    return {split: describe_dataset(data) for split, data in sorted(self._cache.items())}


class Embedder:
  """Embeds splits with the current variables, remembering the results until they change."""

  def __init__(self, datasets: Datasets):
    self.datasets = datasets
    self.check: Optional[Callable[[], None]] = None   # runs before each batch (raises to stop)
    self._owner = None
    self._memo: Dict[tuple, Any] = {}

  def _remember(self, variables, key, compute):
    if variables is not self._owner:  # identity: new weights, new embeddings
      self._owner, self._memo = variables, {}
    if key not in self._memo:
      self._memo[key] = compute()
    return self._memo[key]

  def paired(self, model, variables, split: str, *, max_examples: int = 0,
             batch_size: int = embed_lib.DEFAULT_BATCH_SIZE) -> Tuple[PairedData, np.ndarray, Dict[str, np.ndarray]]:
    """(data, indices, {"z_s_x", "z_s_y", "z_x", "z_y"}) for a paired split."""
    data = self.datasets(split)
    if not isinstance(data, PairedData):
      raise ValueError(f"split {split!r} of {data.name} holds zero-shot (sketch/photo) data, "
                       "not instance-level pairs")
    idx = embed_lib.subset(len(data), max_examples)
    emb = self._remember(variables, ("paired", split, max_examples, batch_size),
                         lambda: embed_lib.embed_paired(model, variables, data, indices=idx,
                                                        batch_size=batch_size, check=self.check))
    return data, idx, emb

  def zero_shot(self, model, variables, split: str, *, max_examples: int = 0,
                batch_size: int = embed_lib.DEFAULT_BATCH_SIZE):
    """(data, sketch indices, photo indices, {"sketch_z_s", "photo_z_s"})."""
    data = self.datasets(split)
    if not isinstance(data, ZeroShotData):
      raise ValueError(f"split {split!r} of {data.name} holds instance-level pairs, not "
                       "zero-shot sketch/photo data")
    s_idx = embed_lib.subset(len(data.sketch), max_examples)
    p_idx = embed_lib.subset(len(data.photo), max_examples, seed=1)
    emb = self._remember(variables, ("zero_shot", split, max_examples, batch_size),
                         lambda: embed_lib.embed_zero_shot(model, variables, data, sketch_indices=s_idx,
                                                           photo_indices=p_idx, batch_size=batch_size,
                                                           check=self.check))
    return data, s_idx, p_idx, emb


# ---------------------------------------------------------------------------
# The evaluators

# The retrieval strip shown during training: this many sketches, each with its top-ranked photos.
STRIP_QUERIES, STRIP_RANKS = 8, 10

EVALUATORS: Dict[str, type] = {}


def register(cls):
  """Class decorator: makes `cls` available as `type: cls.type_name` in config.evals."""
  EVALUATORS[cls.type_name] = cls
  return cls


class Evaluator:
  """One configured evaluation. Subclasses set type_name and FIELDS and implement `evaluate`."""
  type_name = ""
  FIELDS: Dict[str, Any] = {}          # type-specific fields and their defaults
  DURING_TRAINING = True
  selects = False                       # whether `selection_score` picks the best checkpoint

  def __init__(self, name: str, entry: Mapping[str, Any], embedder: Embedder):
    if not name or "/" in name:
      raise ValueError(f"evals entry name {name!r} must be non-empty and contain no '/'")
    allowed = dict(COMMON_FIELDS, **self.FIELDS)
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
      raise ValueError(f"evals.{name} ({self.type_name}): unknown field(s) {unknown}; "
                       f"allowed: {sorted(allowed)}")
    self.name = name
    self.options = {k: entry.get(k, default) for k, default in allowed.items()}
    self.options["type"] = self.type_name
    if self.options["during_training"] is None:
      self.options["during_training"] = self.DURING_TRAINING
    for field in ("max_examples", "batch_size"):
      value = self.options[field]
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0 or (
          field == "batch_size" and value == 0):
        raise ValueError(f"evals.{name}.{field} must be a {'positive' if field == 'batch_size' else 'non-negative'} "
                         f"integer, got {value!r}")
    self.embedder = embedder
    self.artifacts: List[str] = []   # files written by the last call
    self.validate()

  def validate(self) -> None:
    """Checks the type-specific options (override)."""

  @property
  def split(self) -> str:
    return self.options["split"]

  @property
  def during_training(self) -> bool:
    return bool(self.options["during_training"])

  def splits(self) -> Tuple[str, ...]:
    """The splits this evaluator reads."""
    return (self.split,)

  def __call__(self, model, variables, step: int, out_dir: Optional[str] = None) -> Dict[str, float]:
    self.artifacts = []
    out = self.evaluate(model, variables, int(step), out_dir)
    return {f"{self.prefix}{k}": v for k, v in out.items()}

  @property
  def prefix(self) -> str:
    """What this evaluator's metric keys start with: its split and its name ("valid/pr/")."""
    return f"{self.split}/{self.name}/"

  def evaluate(self, model, variables, step: int, out_dir: Optional[str]) -> Dict[str, float]:
    raise NotImplementedError

  def selection_score(self, metrics: Mapping[str, Any]) -> Optional[float]:
    """The score that selects the best checkpoint from this evaluator's `metrics` (higher is
    better), None when this evaluation does not qualify; only for evaluators that `select`."""
    return None

  def images(self, model, variables, step: int) -> Dict[str, np.ndarray]:
    """{tag: uint8 (H, W, 3) image} to show with the run's curves (TensorBoard); {} by default."""
    return {}

  def headline(self, metrics: Mapping[str, Any]) -> str:
    """The few of this evaluator's `metrics` a user decides on, as one short phrase."""
    return ""

  def _own(self, metrics: Mapping[str, Any]) -> Dict[str, Any]:
    return {k[len(self.prefix):]: v for k, v in metrics.items() if k.startswith(self.prefix)}

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r}, {self.options})"


@register
class ZeroShotRetrieval(Evaluator):
  """docs/method.md §5a: sketches (r^x z_s means) retrieve photos (r^y z_s means) by cosine distance.

  Reports map_all, and per K: precision@K, map@K (the usual mAP@K: divided by
  the relevant items in the top K) and map@K_reference (the reference release's:
  divided by K), plus num_queries and queries_without_relevant.
  """
  type_name = "zs_retrieval"
  FIELDS = {"ks": (100,)}

  def validate(self):
    ks = self.options["ks"]
    ks = (ks,) if np.ndim(ks) == 0 else tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0 for k in ks):
      raise ValueError(f"evals.{self.name}.ks must hold positive integers, got {self.options['ks']!r}")
    self.options["ks"] = tuple(int(k) for k in ks)

  def _retrieval(self, model, variables):
    return self.embedder.zero_shot(model, variables, self.split, max_examples=self.options["max_examples"],
                                   batch_size=self.options["batch_size"])

  def headline(self, metrics):
    m = self._own(metrics)
    return f"mAP@all {m['map_all']:.3f}, " + ", ".join(f"P@{k} {m[f'precision@{k}']:.3f}"
                                                       for k in self.options["ks"])

  def images(self, model, variables, step):
    """A retrieval strip: the top-ranked photos of the first sketches, green where relevant."""
    data, s_idx, p_idx, emb = self._retrieval(model, variables)
    return {f"{self.prefix}top_{STRIP_RANKS}": grids.retrieval_strip(
        emb["sketch_z_s"][:STRIP_QUERIES], data.sketch_labels[s_idx][:STRIP_QUERIES],
        emb["photo_z_s"], data.photo_labels[p_idx], data.classes, STRIP_RANKS)}

  def evaluate(self, model, variables, step, out_dir):
    data, s_idx, p_idx, emb = self._retrieval(model, variables)
    return metrics_lib.zero_shot_retrieval(emb["sketch_z_s"], data.sketch_labels[s_idx],
                                           emb["photo_z_s"], data.photo_labels[p_idx],
                                           ks=self.options["ks"])


@register
class PairedRetrieval(Evaluator):
  """docs/method.md §5b: nearest-neighbour retrieval of each pair's partner.

  shared_*: by the shared means (r^x vs r^y z_s); exclusive_*: by the
  exclusive means (q z_x vs q z_y), which should be near chance (1 / num_pairs).
  Accuracies are fractions; *_hits are counts (docs/method.md §4 model selection keeps
  the best shared accuracy among checkpoints with exclusive hits <= 1 each).
  """
  type_name = "paired_retrieval"
  selects = True

  def selection_score(self, metrics: Mapping[str, Any]) -> Optional[float]:
    """docs/method.md §4: shared X->Y + Y->X accuracy, if the exclusive hits are <= 1 each."""
    p = self.prefix
    if p + "shared_x_to_y" not in metrics:
      return None
    if metrics[p + "exclusive_x_to_y_hits"] > 1 or metrics[p + "exclusive_y_to_x_hits"] > 1:
      return None
    # Rounded: equal hit totals tie exactly (0.94 + 0.99 and 1.0 + 0.93 differ in the last bit).
    return round(float(metrics[p + "shared_x_to_y"] + metrics[p + "shared_y_to_x"]), 9)

  def headline(self, metrics):
    m = self._own(metrics)
    return (f"shared X->Y {m['shared_x_to_y']:.3f}, Y->X {m['shared_y_to_x']:.3f}; exclusive hits "
            f"{m['exclusive_x_to_y_hits']} / {m['exclusive_y_to_x_hits']} of {m['num_pairs']} pairs")

  def evaluate(self, model, variables, step, out_dir):
    _, _, emb = self.embedder.paired(model, variables, self.split, max_examples=self.options["max_examples"],
                                     batch_size=self.options["batch_size"])
    shared = metrics_lib.paired_retrieval_accuracy(emb["z_s_x"], emb["z_s_y"])
    exclusive = metrics_lib.paired_retrieval_accuracy(emb["z_x"], emb["z_y"])
    n = shared["num_pairs"]
    hits = lambda fraction: int(round(fraction * n))
    return {
        "shared_x_to_y": shared["x_to_y"], "shared_y_to_x": shared["y_to_x"],
        "exclusive_x_to_y": exclusive["x_to_y"], "exclusive_y_to_x": exclusive["y_to_x"],
        "shared_x_to_y_hits": hits(shared["x_to_y"]), "shared_y_to_x_hits": hits(shared["y_to_x"]),
        "exclusive_x_to_y_hits": hits(exclusive["x_to_y"]),
        "exclusive_y_to_x_hits": hits(exclusive["y_to_x"]),
        "num_pairs": int(n), "chance": 1.0 / n,
    }


@register
class Disentanglement(Evaluator):
  """Linear probes of the known factors from each latent (`metrics.disentanglement`).

  Probes are fitted on `train_split` and scored on `split`; when the two are the
  same split (validation during training), they are fitted on its even-numbered
  examples and scored on the odd-numbered ones. Keys: "<latent>/<factor>" and
  "<latent>/<factor>_chance" (the most frequent test label's frequency).
  """
  type_name = "disentanglement"
  FIELDS = {"train_split": "train", "factor_names": (), "latents": ("z_s_x", "z_x", "z_y"), "l2": 1e-3}

  def validate(self):
    latents = tuple(self.options["latents"])
    unknown = [z for z in latents if z not in embed_lib.PAIRED_EMBEDDINGS]
    if not latents or unknown:
      raise ValueError(f"evals.{self.name}.latents must be a non-empty subset of "
                       f"{list(embed_lib.PAIRED_EMBEDDINGS)}, got {list(latents)}")
    self.options["latents"] = latents
    names = self.options["factor_names"]
    self.options["factor_names"] = (names,) if isinstance(names, str) else tuple(names)

  def splits(self):
    return tuple(dict.fromkeys((self.options["train_split"], self.split)))

  def headline(self, metrics):
    """Each factor as read from each latent, beside chance."""
    m = self._own(metrics)
    factors = dict.fromkeys(k.split("/")[1] for k in m if not k.endswith("_chance"))
    latents = self.options["latents"]
    return "; ".join(f"{f} from " + ", ".join(f"{z} {m[f'{z}/{f}']:.2f}" for z in latents)
                     + f" (chance {m[f'{latents[0]}/{f}_chance']:.2f})" for f in factors)

  def _factors(self, data: PairedData) -> Tuple[str, ...]:
    names = self.options["factor_names"] or tuple(data.factor_names) or tuple(data.factors)
    missing = [f for f in names if f not in data.factors]
    if missing or not names:
      raise ValueError(f"evals.{self.name}: factors {missing or '(none)'} are not known for "
                       f"{data.name}/{data.split}; known factors: {sorted(data.factors)}")
    return names

  def evaluate(self, model, variables, step, out_dir):
    get = lambda split: self.embedder.paired(model, variables, split, max_examples=self.options["max_examples"],
                                             batch_size=self.options["batch_size"])
    test_data, test_idx, test_emb = get(self.split)
    if self.options["train_split"] == self.split:
      fit, score = slice(0, None, 2), slice(1, None, 2)
      train_data, train_idx, train_emb = test_data, test_idx[fit], {k: v[fit] for k, v in test_emb.items()}
      test_idx, test_emb = test_idx[score], {k: v[score] for k, v in test_emb.items()}
    else:
      train_data, train_idx, train_emb = get(self.options["train_split"])
    names = self._factors(test_data)
    self._factors(train_data)
    latents = {z: (train_emb[z], test_emb[z]) for z in self.options["latents"]}
    factors = {f: (train_data.factors[f][train_idx], test_data.factors[f][test_idx]) for f in names}
    return metrics_lib.disentanglement(latents, factors, l2=float(self.options["l2"]))


@register
class TranslationGrid(Evaluator):
  """docs/method.md §5c: reconstructions, X->Y / Y->X translations, style transfer and analogies.

  Uses the first `num_examples` pairs of the split and `num_samples` random
  exclusive codes (from `seed`). With an output directory it writes one PNG per
  grid into <out_dir>/<name>/. Reports the pixel MAE of the reconstructions and
  of the paired translations, and the number of images written.
  """
  type_name = "translation_grid"
  FIELDS = {"num_examples": 8, "num_samples": 4, "seed": 0}
  DURING_TRAINING = False

  def validate(self):
    for field, low in (("num_examples", 1), ("num_samples", 0)):
      value = self.options[field]
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"evals.{self.name}.{field} must be an integer >= {low}, got {value!r}")

  def _panels(self, model, variables):
    if model.architecture == "features":
      raise ValueError(f"evals.{self.name}: translation_grid draws images; the model is a "
                       "feature-vector model (model.architecture = 'features')")
    data = self.embedder.datasets(self.split)
    if not isinstance(data, PairedData):
      raise ValueError(f"evals.{self.name}: translation_grid needs paired images; "
                       f"{data.name}/{self.split} is zero-shot data")
    idx = np.arange(min(int(self.options["num_examples"]), len(data)))
    x, y = np.asarray(data.x[idx], np.float32), np.asarray(data.y[idx], np.float32)
    panels = grids.make_panels(model, variables, x, y, num_samples=int(self.options["num_samples"]),
                               seed=int(self.options["seed"]))
    return idx, x, y, panels

  def images(self, model, variables, step):
    """The translation and analogy grids, as the figures eval.py writes."""
    _, x, y, panels = self._panels(model, variables)
    shown = ("translation_x_to_y", "translation_y_to_x", "analogy_x", "analogy_y")
    layouts = {k: v for k, v in grids.grid_layouts(panels, x, y).items() if k in shown}
    return {f"{self.prefix}{k}": v for k, v in grids.grid_figures(layouts).items()}

  def headline(self, metrics):
    m = self._own(metrics)
    return f"reconstruction MAE x {m['recon_mae_x']:.3f}, y {m['recon_mae_y']:.3f}"

  def evaluate(self, model, variables, step, out_dir):
    idx, x, y, panels = self._panels(model, variables)
    out = grids.translation_errors(panels, x, y)
    written = {}
    if out_dir is not None:
      written = grids.write_grids(os.path.join(out_dir, self.name), grids.grid_layouts(panels, x, y))
      self.artifacts = list(written.values())
    out.update(images_written=len(written), num_examples=int(idx.size))
    return out


def make_evaluator(name: str, entry: Mapping[str, Any], embedder: Embedder) -> Evaluator:
  """The evaluator that `config.evals.<name> = entry` describes."""
  entry = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)
  kind = entry.get("type")
  if kind not in EVALUATORS:
    raise ValueError(f"evals.{name}.type is {kind!r}; known evaluator types: {sorted(EVALUATORS)}")
  return EVALUATORS[kind](name, entry, embedder)


class EvaluationSuite:
  """Every evaluator of config.evals (or those that run during training), sharing data.

  What the training loop calls: `prepare()` before the first step (loads
  every split, so a missing one fails at start-up), `suite(model, variables,
  step)` for the metrics, `images(...)` for the pictures beside them,
  `headline(metrics)` for the log line, and `selection_score(metrics)` for
  the rule that picks the best checkpoint (owned by the evaluator whose
  metrics it reads). `drawing` evaluators only draw (during training, the
  translation grids that compute no metrics then).
  """

  def __init__(self, evaluators: Sequence[Evaluator], datasets: Datasets,
               out_dir: Optional[Callable[[int], Optional[str]]] = None,
               drawing: Sequence[Evaluator] = ()):
    self.evaluators = list(evaluators)
    self.drawing = list(drawing)
    self.datasets = datasets
    self._out_dir = out_dir or (lambda step: None)
    everyone = self.evaluators + self.drawing
    self._embedders = list(dict.fromkeys(e.embedder for e in everyone if e.embedder is not None))

  @classmethod
  def from_config(cls, config, *, training: bool = False, datasets: Optional[Datasets] = None,
                  out_dir: Optional[Callable[[int], Optional[str]]] = None):
    """`config`: a RunConfig (or anything with `.evals` and `.data`). With training=True: the
    entries with during_training compute metrics, the others only draw; all on data.valid_split
    when it is set."""
    datasets = datasets or Datasets(config.data)
    embedder = Embedder(datasets)
    valid = config.data.valid_split if training else ""
    evaluators, drawing = [], []
    for name, entry in (config.evals or {}).items():
      evaluator = make_evaluator(name, entry, embedder)
      if valid:
        evaluator.options["split"] = valid
      (evaluators if not training or evaluator.during_training else drawing).append(evaluator)
    return cls(evaluators, datasets, out_dir, drawing)

  @classmethod
  def for_training(cls, config, workdir: str, *, datasets: Optional[Datasets] = None
                   ) -> Optional["EvaluationSuite"]:
    """The evaluations of `trainer.train_and_evaluate`; None when no entry runs during training.

    Entries run on config.data.valid_split when it is set (docs/method.md §4:
    select on validation), else on their own split; images (translation_grid
    with during_training=True) go to <workdir>/eval_during_training/step_<step>/
    on process 0.
    """
    writes = lambda step: os.path.join(workdir, "eval_during_training", f"step_{int(step)}")
    out_dir = lambda step: writes(step) if jax.process_index() == 0 else None
    suite = cls.from_config(config, training=True, datasets=datasets, out_dir=out_dir)
    if not suite.evaluators and not suite.drawing:
      return None
    logging.info("evaluating during training: %s", ", ".join(
        [f"{e.name} ({e.type_name} on {e.split})" for e in suite.evaluators]
        + [f"{e.name} ({e.type_name} on {e.split}, images only)" for e in suite.drawing]))
    return suite

  def __call__(self, model, variables, step: int, out_dir: Optional[str] = None,
               check: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
    """Every evaluator's metrics. `check()` runs before each evaluator and each batch (it raises to
    stop the evaluation, e.g. when SIGTERM asks the run to stop)."""
    out_dir = out_dir if out_dir is not None else self._out_dir(step)
    for embedder in self._embedders:
      embedder.check = check
    results = {}
    try:
      for evaluator in self.evaluators:
        if check is not None:
          check()
        results.update(evaluator(model, variables, step, out_dir))
    finally:
      for embedder in self._embedders:
        embedder.check = None
    return results

  def images(self, model, variables, step: int) -> Dict[str, np.ndarray]:
    """{tag: uint8 image} of every evaluator that draws (grids, retrieval strips)."""
    out = {}
    for evaluator in self.evaluators + self.drawing:
      out.update(evaluator.images(model, variables, step))
    return out

  def headline(self, metrics: Mapping[str, Any]) -> str:
    """One line of the metrics a user decides on, each evaluator's with its split."""
    parts = [f"{e.name} on {e.split}: {e.headline(metrics)}" for e in self.evaluators
             if any(k.startswith(e.prefix) for k in metrics)]
    return "; ".join(p for p in parts if not p.endswith(": "))

  def prepare(self) -> None:
    """Loads every split the evaluators read (kept for them): a missing split fails now."""
    for evaluator in self.evaluators + self.drawing:
      for split in evaluator.splits():
        self.datasets(split)

  @property
  def selects(self) -> bool:
    """Whether an evaluator picks the best checkpoint (then `selection_score` can be non-None)."""
    return any(e.selects for e in self.evaluators)

  def selection_score(self, metrics: Mapping[str, Any]) -> Optional[float]:
    """The first selecting evaluator's score of `metrics`, or None."""
    for evaluator in self.evaluators:
      if evaluator.selects:
        return evaluator.selection_score(metrics)
    return None

  @property
  def artifacts(self) -> List[str]:
    return [path for e in self.evaluators for path in e.artifacts]

