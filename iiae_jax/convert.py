"""The reference release's trained IIAEs (TensorFlow 1 checkpoints) as our parameters.

    python -m iiae_jax.convert --config=configs/sketchy.py \\
        --reference_checkpoint=PATH/model-NNNN --workdir=runs/sketchy_authors
    python eval.py --config=configs/sketchy.py --workdir=runs/sketchy_authors

    variables = iiae_jax.convert.from_reference("PATH/model-NNNN", config.model)  # {"params", "batch_stats"}

The mapping is data: `variable_table(model_config)` lists, for every array of
our model, the reference variable it is read from (named by the reference's
variable scopes and `tf.layers` calls) and the transformation applied;
docs/reference_checkpoints.md shows the tables of the paper's configs.
Optimiser slots, `global_step`, Adam's `beta1_power`/`beta2_power` and the
loss averages are not network weights: they are skipped (and counted). The
checkpoint is read with TensorFlow's own reader, an optional dependency
(`pip install "iiae_jax[convert]"`), imported only here, when a checkpoint is read.
"""
import dataclasses
import glob
import logging
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
from absl import flags
from absl import logging as absl_logging
from flax import traverse_util
from ml_collections import config_flags

from iiae_jax import checkpointing
from iiae_jax import cli
from iiae_jax import models
from iiae_jax import observability
from iiae_jax import run_config
from iiae_jax.config import ModelConfig
from iiae_jax.errors import CheckpointError, ConfigMismatchError, UsageError
from iiae_jax.train_state import make_optimizer, train_state_holding
from iiae_jax.workdir import Workdir

Shape = Tuple[int, ...]


# ---------------------------------------------------------------------------
# Transformations from a reference array to ours


@dataclasses.dataclass(frozen=True)
class Transform:
  """How a reference array becomes ours."""
  description: str
  apply: Callable[[np.ndarray], np.ndarray]
  reference_shape: Callable[[Shape], Shape]   # of our shape


TRANSFORMS: Dict[str, Transform] = {
    "copy": Transform("as is", lambda a: a, lambda shape: tuple(shape)),
    # tf.nn.conv2d_transpose takes [h, w, out, in] and is the gradient of a convolution: relative to
    # flax's ConvTranspose (no kernel flip) its kernel is flipped in both spatial axes.
    "flip_transpose": Transform(
        "spatial flip, in/out swapped: `k[::-1, ::-1].transpose(0, 1, 3, 2)`",
        lambda a: np.ascontiguousarray(np.transpose(a[::-1, ::-1], (0, 1, 3, 2))),
        lambda shape: (shape[0], shape[1], shape[3], shape[2])),
}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One array of our model and the reference variable it comes from."""
  collection: str   # "params" or "batch_stats"
  path: str         # ours, within the collection: "decoder_x/PreNorm_0/ConvTranspose_0/kernel"
  reference: str    # the reference's variable: "X_decoder/vae_decoder_5/conv2d_transpose/kernel"
  transform: str    # a key of TRANSFORMS
  shape: Shape = ()  # ours

  @property
  def reference_shape(self) -> Shape:
    return TRANSFORMS[self.transform].reference_shape(self.shape)


# ---------------------------------------------------------------------------
# The reference's layers: `tf.layers.<kind>` inside a variable scope creates `<scope>/<kind>/<var>`
# (each scope of the reference holds at most one layer of a kind, so no `_1` suffixes).

# kind -> (the layer that PreNorm wraps in ours, the kernel's transformation)
_LAYERS = {"dense": ("Dense_0", "copy"), "conv2d": ("Conv_0", "copy"),
           "conv2d_transpose": ("ConvTranspose_0", "flip_transpose")}


def _layer(kind: str, ours: str, scope: str, pre_norm: bool = False) -> List[Entry]:
  """A dense / conv2d / conv2d_transpose layer; `pre_norm`: ours is a `layers.PreNorm` (its bias
  is its own parameter, the kernel that of the layer it wraps)."""
  inner, transform = _LAYERS[kind]
  kernel = f"{ours}/{inner}/kernel" if pre_norm else f"{ours}/kernel"
  return [Entry("params", kernel, f"{scope}/{kind}/kernel", transform),
          Entry("params", f"{ours}/bias", f"{scope}/{kind}/bias", "copy")]


def _batch_norm(ours: str, scope: str) -> List[Entry]:
  """`tf.layers.batch_normalization`: gamma, beta and the moving statistics."""
  ref = f"{scope}/batch_normalization"
  return [Entry("params", f"{ours}/scale", f"{ref}/gamma", "copy"),
          Entry("params", f"{ours}/bias", f"{ref}/beta", "copy"),
          Entry("batch_stats", f"{ours}/mean", f"{ref}/moving_mean", "copy"),
          Entry("batch_stats", f"{ours}/var", f"{ref}/moving_variance", "copy")]


# ---------------------------------------------------------------------------
# The networks, in the order of the reference's functions (encoder.py, decoder.py)


def _feature_encoder(ours: str, scope: str) -> List[Entry]:
  """create_zs_vae_individual_{exclusive,shared}_encoder: <scope>_1 dense, _2 and _3 BN -> dense."""
  return (_layer("dense", f"{ours}/PreNorm_0", f"{scope}_1", pre_norm=True)
          + _batch_norm(f"{ours}/BatchNorm_0", f"{scope}_2")
          + _layer("dense", f"{ours}/PreNorm_1", f"{scope}_2", pre_norm=True)
          + _batch_norm(f"{ours}/Block_0/BatchNorm_0", f"{scope}_3")
          + _layer("dense", f"{ours}/Block_0/Dense_0", f"{scope}_3"))


def _feature_decoder(ours: str, scope: str) -> List[Entry]:
  """create_zs_vae_decoder: expand_sR_eR (dense -> BN), vae_decoder_1 (dense)."""
  return (_layer("dense", f"{ours}/PreNorm_0", f"{scope}/expand_sR_eR", pre_norm=True)
          + _batch_norm(f"{ours}/BatchNorm_0", f"{scope}/expand_sR_eR")
          + _layer("dense", f"{ours}/Dense_0", f"{scope}/vae_decoder_1"))


def _conv_stack(ours: str, scope: str, stages: int, norm_after: bool) -> List[Entry]:
  """<scope>_1 conv, <scope>_k (k = 2..stages) BN -> conv; ours: models.ConvStack."""
  entries = []
  for i in range(stages):
    if i > 0:
      entries += _batch_norm(f"{ours}/BatchNorm_{i - 1}", f"{scope}_{i + 1}")
    pre_norm = i < stages - 1 or norm_after
    entries += _layer("conv2d", f"{ours}/PreNorm_{i}" if pre_norm else f"{ours}/Conv_0",
                      f"{scope}_{i + 1}", pre_norm=pre_norm)
  return entries


def _image_exclusive_encoder(ours: str, domain: str, stages: int) -> List[Entry]:
  """create_vae_individual_exclusive_encoder(_flat): one stage fewer, then BN -> dense."""
  head = f"{domain}_encoder/vae_encoder_q_z_exclusive"
  return (_conv_stack(f"{ours}/ConvStack_0", f"{domain}_encoder/vae_individual_exclusive_encoder",
                      stages - 1, norm_after=True)
          + _batch_norm(f"{ours}/BatchNorm_0", head) + _layer("dense", f"{ours}/Dense_0", head))


def _spatial_shared_encoder(ours: str, domain: str, stages: int) -> List[Entry]:
  """create_vae_individual_shared_encoder: the conv stack to the latent grid."""
  return _conv_stack(f"{ours}/ConvStack_0", f"{domain}_encoder/vae_individual_shared_encoder",
                     stages, norm_after=False)


def _flat_shared_encoder(ours: str, domain: str, stages: int) -> List[Entry]:
  """create_vae_individual_shared_encoder_flat: the conv stack, then two BN -> dense."""
  first, second = (f"{domain}_encoder/vae_encoder_r_z_shared_{k}" for k in (1, 2))
  return (_conv_stack(f"{ours}/ConvStack_0", f"{domain}_encoder/vae_individual_shared_encoder",
                      stages, norm_after=True)
          + _batch_norm(f"{ours}/BatchNorm_0", first)
          + _layer("dense", f"{ours}/PreNorm_0", first, pre_norm=True)
          + _batch_norm(f"{ours}/Block_0/BatchNorm_0", second)
          + _layer("dense", f"{ours}/Block_0/Dense_0", second))


def _image_decoder(ours: str, scope: str, hidden: int, flat: bool) -> List[Entry]:
  """create_vae_decoder: [expand_sR_eR dense -> BN,] vae_decoder_{hidden+1..2} deconv -> BN,
  vae_decoder_1 deconv (the reference numbers its decoder layers down, mirroring the encoder)."""
  entries, offset = [], 0
  if flat:
    entries += (_layer("dense", f"{ours}/PreNorm_0", f"{scope}/expand_sR_eR", pre_norm=True)
                + _batch_norm(f"{ours}/BatchNorm_0", f"{scope}/expand_sR_eR"))
    offset = 1
  for i in range(hidden):
    layer_scope = f"{scope}/vae_decoder_{hidden + 1 - i}"
    entries += (_layer("conv2d_transpose", f"{ours}/PreNorm_{i + offset}", layer_scope, pre_norm=True)
                + _batch_norm(f"{ours}/BatchNorm_{i + offset}", layer_scope))
  return entries + _layer("conv2d_transpose", f"{ours}/ConvTranspose_0", f"{scope}/vae_decoder_1")


def _entries(c: ModelConfig) -> List[Entry]:
  """The table of `c` without shapes (zs_vae_model.py for features, vae_model.py for images)."""
  entries = []
  if c.architecture == "features":
    for domain, d in (("X", "x"), ("Y", "y")):
      entries += _feature_encoder(f"exclusive_encoder_{d}", f"{domain}_encoder/vae_individual_exclusive_encoder")
      entries += _feature_encoder(f"shared_encoder_{d}", f"{domain}_encoder/vae_individual_shared_encoder")
    if c.shared_posterior == "joint":  # create_zs_vae_shared_encoder
      entries += (_layer("dense", "joint_encoder/PreNorm_0", "S_encoder/vae_shared_encoder_1", pre_norm=True)
                  + _batch_norm("joint_encoder/Block_0/BatchNorm_0", "S_encoder/vae_shared_encoder_2")
                  + _layer("dense", "joint_encoder/Block_0/Dense_0", "S_encoder/vae_shared_encoder_2"))
    for domain, d in (("X", "x"), ("Y", "y")):
      entries += _feature_decoder(f"decoder_{d}", f"{domain}_decoder")
  else:
    stages = len(models.stage_multipliers(c.resolution, c.latent_resolution, c.channel_cap))
    flat = c.architecture == "flat"
    for domain, d in (("X", "x"), ("Y", "y")):
      entries += _image_exclusive_encoder(f"exclusive_encoder_{d}", domain, stages)
      shared = _flat_shared_encoder if flat else _spatial_shared_encoder
      entries += shared(f"shared_encoder_{d}", domain, stages)
    if c.shared_posterior == "joint" and flat:  # create_vae_shared_encoder_flat
      first, second = "S_encoder/vae_encoder_q_z_shared_1", "S_encoder/vae_encoder_q_z_shared_2"
      entries += (_layer("dense", "joint_encoder/PreNorm_0", first, pre_norm=True)
                  + _batch_norm("joint_encoder/Block_0/BatchNorm_0", second)
                  + _layer("dense", "joint_encoder/Block_0/Dense_0", second))
    elif c.shared_posterior == "joint":  # create_vae_shared_encoder
      entries += _layer("conv2d", "joint_encoder/Conv_0", "S_encoder/vae_encoder_q_z_shared_1")
    for domain, d in (("X", "x"), ("Y", "y")):
      # Every decoder copy of vae_model.py (reuse=True) reads this one set of variables.
      entries += _image_decoder(f"decoder_{d}", f"{domain}_decoder", stages - 1, flat)
  if c.num_classes:  # create_zs_class_decoder
    entries += _layer("dense", "classifier", "C_decoder/classifier")
  return entries


def our_shapes(model_config) -> Dict[Tuple[str, str], Shape]:
  """{(collection, path): shape} of every array of the model that `model_config` describes."""
  model = models.build_model(model_config)
  x, y = (jax.ShapeDtypeStruct((1,) + tuple(s), np.float32) for s in (model.x_shape, model.y_shape))
  variables = jax.eval_shape(model.init, jax.random.key(0), x, y)
  return {(collection, "/".join(path)): tuple(leaf.shape)
          for collection, tree in variables.items()
          for path, leaf in traverse_util.flatten_dict(tree).items()}


def variable_table(model_config) -> List[Entry]:
  """Every array of our model with the reference variable it is read from, its shape and how."""
  c = ModelConfig.from_mapping(model_config)
  shapes = our_shapes(c)
  entries = _entries(c)
  covered = {(e.collection, e.path) for e in entries}
  if covered != set(shapes) or len(covered) != len(entries):  # a change of models.py not mirrored here
    raise RuntimeError(f"iiae_jax.convert's table does not match the model: arrays without an entry "
                       f"{sorted(set(shapes) - covered)}, entries without an array {sorted(covered - set(shapes))}")
  return [dataclasses.replace(e, shape=shapes[(e.collection, e.path)]) for e in entries]


def markdown_table(model_config) -> str:
  """variable_table as the Markdown table of docs/reference_checkpoints.md."""
  lines = ["| our array | reference variable | shape | transformation |", "|---|---|---|---|"]
  for e in variable_table(model_config):
    shape = (str(e.shape) if e.reference_shape == e.shape
             else f"{e.reference_shape} → {e.shape}")
    lines.append(f"| `{e.collection}/{e.path}` | `{e.reference}` | {shape} | "
                 f"{TRANSFORMS[e.transform].description} |")
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The reference's checkpoints

# The scopes of the reference's networks; every other variable belongs to training.
NETWORK_SCOPES = ("X_encoder/", "Y_encoder/", "S_encoder/", "X_decoder/", "Y_decoder/", "C_decoder/")
# A variable only the reference graph of each architecture holds (to name what a checkpoint is).
_ARCHITECTURE_MARKERS = (
    ("features", "X_encoder/vae_individual_shared_encoder_1/dense/kernel"),
    ("flat", "X_encoder/vae_encoder_r_z_shared_1/dense/kernel"),
    ("spatial", "X_encoder/vae_individual_shared_encoder_1/conv2d/kernel"),
)
_LISTED = 6  # differences named in one error message


def skipped_kind(name: str) -> Optional[str]:
  """What a non-network variable of a reference checkpoint is (None: a network variable)."""
  if name.endswith(("/Adam", "/Adam_1")):
    return "Adam slots"
  if name in ("beta1_power", "beta2_power"):
    return "Adam's beta powers"
  if name == "global_step":
    return "global_step"
  if "ExponentialMovingAverage" in name:
    return "loss averages"
  if not name.startswith(NETWORK_SCOPES):
    return "others"
  return None


def _tensorflow():
  # TensorFlow's C++ start-up notes (oneDNN, CPU features) say nothing a user acts on here.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  # optional: the convert extra
  except ImportError as e:
    raise UsageError('reading the reference\'s TensorFlow checkpoints needs TensorFlow: '
                     'pip install "iiae_jax[convert]" (or tensorflow-cpu)') from e
  return tf


def check_prefix(prefix: str) -> List[str]:
  """The data files of the checkpoint `prefix` (`<prefix>.index` + `<prefix>.data-*`); CheckpointError
  naming what is wrong when it is not a complete checkpoint prefix."""
  where = f"reference checkpoint {prefix}"
  if os.path.isdir(prefix):
    found = sorted(p[:-len(".index")] for p in glob.glob(os.path.join(glob.escape(prefix), "*.index")))
    hint = (f"give a checkpoint prefix such as {found[-1]} (the path before .index)" if found
            else "it holds no TensorFlow checkpoint (no *.index file)")
    raise CheckpointError(f"{where} is a folder: {hint}")
  for pattern in (r"\.index$", r"\.meta$", r"\.data-\d+-of-\d+$"):
    if re.search(pattern, prefix):
      raise CheckpointError(f"{where} names one of its files: give the prefix "
                            f"{re.sub(pattern, '', prefix)} (the path before .index)")
  if not os.path.isfile(prefix + ".index"):
    raise CheckpointError(f"{where} is not a TensorFlow checkpoint prefix: {prefix}.index does not exist")
  shards = sorted(glob.glob(glob.escape(prefix) + ".data-*-of-*"))
  counts = {m.group(1) for m in (re.search(r"-of-(\d+)$", s) for s in shards) if m}
  if not shards or len(counts) != 1:
    raise CheckpointError(f"{where} has no complete set of data files: {prefix}.data-00000-of-NNNNN "
                          "is missing (download the checkpoint again)")
  total = int(counts.pop())
  expected = [f"{prefix}.data-{i:05d}-of-{total:05d}" for i in range(total)]
  missing = [p for p in expected if not os.path.isfile(p)]
  if missing:
    raise CheckpointError(f"{where} is incomplete: {missing[0]} is missing"
                          f"{f' (and {len(missing) - 1} more data files)' if len(missing) > 1 else ''}")
  return expected


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _architecture_of(names) -> Optional[str]:
  return next((arch for arch, marker in _ARCHITECTURE_MARKERS if marker in names), None)


def _describe(c: ModelConfig) -> str:
  if c.architecture == "features":
    return f"features IIAE, {c.x_dim}/{c.y_dim}-d inputs"
  return f"{c.architecture} IIAE, {c.resolution}x{c.resolution}x{c.channels} images"


def _spec(spec: Tuple[str, Shape]) -> str:
  dtype, shape = spec
  return str(shape) if dtype == "float32" else f"{dtype} {shape}"


def _refuse_mismatches(prefix: str, c: ModelConfig, table: List[Entry],
                       found: Dict[str, Tuple[str, Shape]]) -> None:
  """ConfigMismatchError naming the network variables missing, unexpected or of another shape."""
  wanted = {e.reference: ("float32", e.reference_shape) for e in table}   # in the table's order
  network = {name: spec for name, spec in found.items() if skipped_kind(name) is None}
  missing = [f"missing {n} {shape}" for n, (_, shape) in wanted.items() if n not in network]
  unexpected = [f"unexpected {n} {network[n][1]}" for n in sorted(set(network) - set(wanted))]
  differing = [f"{n} is {_spec(network[n])} in the checkpoint, {_spec(spec)} for the config"
               for n, spec in wanted.items() if n in network and network[n] != spec]
  if not (missing or unexpected or differing):
    return
  counts = ", ".join(f"{len(group)} {what}" for group, what in (
      (missing, "missing"), (unexpected, "unexpected"), (differing, "of another shape or dtype")) if group)
  theirs = _architecture_of(network)
  other_architecture = theirs is not None and theirs != c.architecture
  kind = (f"it holds a {theirs} IIAE of the reference and the config a {c.architecture} one "
          "(model.architecture); " if other_architecture else "")
  # Another architecture: what is missing says most; the same one: the shapes that differ.
  problems = missing + unexpected + differing if other_architecture else differing + missing + unexpected
  listed = "; ".join(problems[:_LISTED])
  more = f"; and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
  raise ConfigMismatchError(f"reference checkpoint {prefix} does not fit the config's model "
                            f"({_describe(c)}): {kind}network variables {counts}: {listed}{more}")


def read_reference(prefix: str, model_config) -> Tuple[Dict[str, Any], Optional[int], Dict[str, int]]:
  """(variables, the reference's global_step or None, {kind: count} of the variables skipped).

  Raises CheckpointError (not a complete checkpoint, an unreadable file) or
  ConfigMismatchError (network variables missing, unexpected or of another
  shape than `model_config` needs), each naming the culprit in one line.
  """
  c = ModelConfig.from_mapping(model_config)
  table = variable_table(c)
  tf = _tensorflow()
  data_files = check_prefix(prefix)
  try:
    reader = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
  except Exception as e:  # pylint: disable=broad-except  # TensorFlow raises several types for bad files
    raise CheckpointError(f"reference checkpoint {prefix}: {prefix}.index cannot be read ({_first_line(e)}): "
                          "it is damaged or not a TensorFlow checkpoint index") from e
  found = {name: (dtypes[name].name, tuple(shape)) for name, shape in shapes.items()}
  _refuse_mismatches(prefix, c, table, found)

  def read(name):
    try:
      return reader.get_tensor(name)
    except Exception as e:  # pylint: disable=broad-except  # a truncated file raises IndexError, others OpError
      raise CheckpointError(f"reference checkpoint {prefix}: variable {name} cannot be read from "
                            f"{', '.join(data_files)} ({_first_line(e)}): the file is truncated or "
                            "damaged (download it again)") from e

  flat = {(e.collection, e.path): np.asarray(TRANSFORMS[e.transform].apply(read(e.reference)), np.float32)
          for e in table}
  variables = {collection: traverse_util.unflatten_dict(
      {tuple(path.split("/")): a for (col, path), a in flat.items() if col == collection})
      for collection in ("params", "batch_stats")}
  skipped: Dict[str, int] = {}
  for name in found:
    kind = skipped_kind(name)
    if kind is not None:
      skipped[kind] = skipped.get(kind, 0) + 1
  step = int(read("global_step")) if "global_step" in found else None
  logging.info("read %d network variables of %s; skipped %d other variables (%s)", len(table), prefix,
               sum(skipped.values()), ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none")
  return variables, step, skipped


def from_reference(prefix: str, model_config) -> Dict[str, Any]:
  """{"params", "batch_stats"} of our model (`model_config`: config.model) from the reference
  checkpoint `prefix` (`PATH/model-NNNN`, written by the reference's tf.train.Saver)."""
  variables, _, _ = read_reference(prefix, model_config)
  return variables


# ---------------------------------------------------------------------------
# A workdir that eval.py (and train.py, to fine-tune) takes as it stands


def _refuse_used_workdir(path: str) -> None:
  if os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f"--workdir={path} is a file; choose a new folder for the converted model")
  for name in ("checkpoints", "best"):
    folder = os.path.join(path, name)
    if os.path.isdir(folder) and os.listdir(folder):
      raise UsageError(f"--workdir={path} already holds checkpoints ({folder}); it is left as it is: "
                       "choose a new folder for the converted model")


def convert_to_workdir(config, reference_checkpoint: str, workdir: str,
                       argv: Optional[List[str]] = None) -> str:
  """Writes the reference checkpoint as `<workdir>/checkpoints/<global_step>`; returns its path.

  The checkpoint is a whole TrainState (fresh Adam state, the reference's
  global_step, the RNG of config.seed) whose record holds the config and the
  origin; config.json and command.txt are written as training writes them.
  Everything is read and checked before anything is written.
  """
  run = run_config.parse(config)
  workdir = os.path.abspath(workdir)
  _refuse_used_workdir(workdir)
  prefix = os.path.abspath(reference_checkpoint)
  variables, global_step, skipped = read_reference(prefix, run.model)
  step = global_step if global_step is not None else 0
  state = train_state_holding(run.seed, variables, make_optimizer(run.optimizer), step)
  origin = {"reference_checkpoint": prefix, "global_step": global_step, "skipped_variables": skipped}
  os.makedirs(workdir, exist_ok=True)
  wd = Workdir(workdir, main=True)
  with wd.locked():
    _refuse_used_workdir(workdir)  # again under the lock: a run may have started meanwhile
    checkpoints = checkpointing.Checkpoints(wd.join("checkpoints"))
    try:
      checkpoints.save(step, jax.device_get(state), {"config": run.record, "origin": origin}, force=True)
    finally:
      checkpoints.close()
    wd.record_config(run.tree, step, argv)
  return wd.join("checkpoints", str(step))


def _run_from_command_line() -> None:
  # The flags are defined only when run as a program: importing the module defines none.
  config = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
  reference = flags.DEFINE_string("reference_checkpoint", None,
                                  "The reference's checkpoint prefix: PATH/model-NNNN (before .index).")
  workdir = flags.DEFINE_string("workdir", None, "A new folder for the converted model.")
  flags.mark_flags_as_required(["config", "reference_checkpoint", "workdir"])

  def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.INFO)
    observability.quiet_library_logs()
    path = convert_to_workdir(config.value, reference.value, workdir.value, argv=sys.argv)
    config_file = config_flags.get_config_filename(flags.FLAGS["config"])
    print(f"wrote {path}; evaluate it with: python eval.py --config={config_file} --workdir={workdir.value}")
  cli.run(main)


if __name__ == "__main__":
  _run_from_command_line()
