"""iiae_jax.convert against TensorFlow: checkpoints written as the reference's tf.train.Saver writes
them, with the reference's layers computed by TensorFlow's own ops under its variable scopes.

The TensorFlow side below transcribes the reference release (ops.py, encoder.py, decoder.py,
zs_vae_model.py, vae_model.py) in inference mode (is_training False: running statistics, the
posterior means as latents). Its layers create their variables under the names that
`tf.layers.<kind>` gives them inside a scope (`<scope>/dense/kernel`, `<scope>/batch_normalization/
moving_mean`, ...), and its decoders are built several times with reuse=True, as the reference's are.
The image networks take the reference's literal channel lists (encoder.py's layer_specs) at 256x256,
and the same pattern with fewer stages for the tiny models here.
"""
import glob
import importlib
import json
import os
import shutil
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from iiae_jax import checkpointing, convert, evaluate, evaluation, layers, models, recipes, run_config
from iiae_jax.config import RENAMED, ModelConfig
from iiae_jax.errors import CheckpointError, ConfigMismatchError, UsageError
from iiae_jax.inference import exclusive_embedding, shared_embedding
from iiae_jax.train_state import abstract_train_state, create_train_state, make_optimizer
from tests.helpers import ROOT, flat_leaves, run, tiny_model_config

pytestmark = pytest.mark.tensorflow


class _Imported:
  """A module imported at its first use: collecting this file (each xdist worker collects every
  file) loads no TensorFlow into a process whose other tests pin that the package never does."""

  def __init__(self, name):
    self._name = name

  def __getattr__(self, attribute):
    if attribute.startswith("_"):   # pytest's collection probes objects for its private markers
      raise AttributeError(attribute)
    return getattr(importlib.import_module(self._name), attribute)


tf = _Imported("tensorflow")
v1 = _Imported("tensorflow.compat.v1")
TOLERANCE = 1e-5          # max |ours - reference| / max |reference|
GLOBAL_STEP = 4321
REFERENCE_MULTIPLIERS = (1, 2, 4, 8, 8)   # encoder.py's layer_specs at 256x256: nsef * (1, 2, 4, 8, 8)
TINY_MULTIPLIERS = (1, 2, 4, 4)           # the same pattern at 32x32 -> 2x2
LEAK = 0.2


def relative_error(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  assert ours.shape == reference.shape, (ours.shape, reference.shape)
  return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


# ---------------------------------------------------------------------------
# The reference's layers (ops.py) with TensorFlow ops, in inference mode


def gen_fc(x, n):
  with v1.variable_scope("dense"):
    kernel = v1.get_variable("kernel", [int(x.shape[-1]), n])
    bias = v1.get_variable("bias", [n])
  return tf.matmul(x, kernel) + bias


def gen_conv(x, n):
  with v1.variable_scope("conv2d"):
    kernel = v1.get_variable("kernel", [4, 4, int(x.shape[-1]), n])
    bias = v1.get_variable("bias", [n])
  return tf.nn.conv2d(x, kernel, strides=2, padding="SAME") + bias


def gen_deconv(x, n):
  with v1.variable_scope("conv2d_transpose"):
    kernel = v1.get_variable("kernel", [4, 4, n, int(x.shape[-1])])   # TF's [h, w, out, in]
    bias = v1.get_variable("bias", [n])
  b, h, w, _ = (int(d) for d in x.shape)
  return tf.nn.conv2d_transpose(x, kernel, [b, 2 * h, 2 * w, n], strides=2, padding="SAME") + bias


def batchnorm(x):
  with v1.variable_scope("batch_normalization"):
    channels = [int(x.shape[-1])]
    gamma = v1.get_variable("gamma", channels)
    beta = v1.get_variable("beta", channels)
    moving_mean = v1.get_variable("moving_mean", channels, trainable=False)
    moving_variance = v1.get_variable("moving_variance", channels, trainable=False)
  return tf.nn.batch_normalization(x, moving_mean, moving_variance, beta, gamma, 1e-5)


def lrelu(x, a):
  x = tf.identity(x)
  return (0.5 * (1 + a)) * x + (0.5 * (1 - a)) * tf.abs(x)


def split(t):
  mean, logvar = tf.split(t, 2, axis=-1)
  return mean, logvar


# ---------------------------------------------------------------------------
# The reference's networks


def zs_encoder(v, scope, width, latent):
  """create_zs_vae_individual_{exclusive,shared}_encoder: (mean, logvar, first rectified)."""
  with v1.variable_scope(f"{scope}_1"):
    out = gen_fc(v, width * 4)
  with v1.variable_scope(f"{scope}_2"):
    hidden = lrelu(batchnorm(out), LEAK)
    out = gen_fc(hidden, width * 2)
  with v1.variable_scope(f"{scope}_3"):
    out = gen_fc(lrelu(batchnorm(out), LEAK), latent * 2)
  return split(out) + (hidden,)


def dense_shared_posterior(h_x, h_y, scope, hidden, latent):
  """<scope>_1 dense on concat(h_x, h_y), <scope>_2 BN -> lrelu -> dense: create_zs_vae_shared_encoder
  (features) and create_vae_shared_encoder_flat (Cars)."""
  with v1.variable_scope(f"{scope}_1"):
    out = gen_fc(tf.concat([h_x, h_y], axis=-1), hidden)
  with v1.variable_scope(f"{scope}_2"):
    out = gen_fc(lrelu(batchnorm(out), LEAK), latent * 2)
  return split(out)


def zs_decoder(s, e, channels, a):
  with v1.variable_scope("expand_sR_eR"):
    h = tf.nn.relu(batchnorm(gen_fc(tf.concat([s, e], axis=-1), a.ndf)))
  with v1.variable_scope("vae_decoder_1"):
    out = gen_fc(h, channels)
  return tf.nn.relu(out) if a.decAct == "relu" else out


def conv_stack(image, scope, width, multipliers):
  """The loop of create_vae_individual_*_encoder: (last conv output, its rectified input)."""
  with v1.variable_scope(f"{scope}_1"):
    out = gen_conv(image, width * multipliers[0])
  rectified = None
  for k, m in enumerate(multipliers[1:], start=2):
    with v1.variable_scope(f"{scope}_{k}"):
      rectified = lrelu(batchnorm(out), LEAK)
      out = gen_conv(rectified, width * m)
  return out, rectified


def image_exclusive_encoder(image, a, flat):
  # The flat (Cars) version takes its widths from nsef (encoder.py's *_flat functions).
  width = a.nsef if flat else a.neef
  out, _ = conv_stack(image, "vae_individual_exclusive_encoder", width, a.multipliers[:-1])
  with v1.variable_scope("vae_encoder_q_z_exclusive"):
    rectified = lrelu(batchnorm(out), LEAK)
    out = gen_fc(tf.reshape(rectified, [int(image.shape[0]), -1]), a.exdim * 2)
  return split(out)


def image_shared_encoder(image, a, flat):
  out, rectified = conv_stack(image, "vae_individual_shared_encoder", a.nsef, a.multipliers)
  if not flat:
    return split(out) + (rectified,)
  with v1.variable_scope("vae_encoder_r_z_shared_1"):
    hidden = tf.reshape(lrelu(batchnorm(out), LEAK), [int(image.shape[0]), -1])
    out = gen_fc(hidden, a.shdim * 2)
  with v1.variable_scope("vae_encoder_r_z_shared_2"):
    out = gen_fc(lrelu(batchnorm(out), LEAK), a.shdim * 2)
  return split(out) + (hidden,)


def image_shared_posterior(h_x, h_y, a, flat):
  if flat:
    return dense_shared_posterior(h_x, h_y, "vae_encoder_q_z_shared", a.shdim * 2, a.shdim)
  with v1.variable_scope("vae_encoder_q_z_shared_1"):  # create_vae_shared_encoder
    return split(gen_conv(tf.concat([h_x, h_y], axis=-1), a.nsef * a.multipliers[-1]))


def image_decoder(s, e, channels, a):
  """create_vae_decoder in test mode (no dropout)."""
  grid = a.latent_resolution
  up = tuple(reversed(a.multipliers[:-1]))   # ndf * (8, 4, 2, 1) at 256x256
  if len(s.shape) < 3:
    with v1.variable_scope("expand_sR_eR"):
      h = tf.nn.relu(batchnorm(gen_fc(tf.concat([s, e], axis=-1), grid * grid * a.ndf * up[0])))
      h = tf.reshape(h, [-1, grid, grid, a.ndf * up[0]])
  else:
    z = tf.tile(tf.reshape(e, [int(s.shape[0]), 1, 1, int(e.shape[-1])]), [1, grid, grid, 1])
    h = tf.concat([s, z], axis=3)
  num_encoder_layers = len(up) + 1
  for i, m in enumerate(up):
    with v1.variable_scope(f"vae_decoder_{num_encoder_layers - i}"):
      h = tf.nn.relu(batchnorm(gen_deconv(h, a.ndf * m)))
  with v1.variable_scope("vae_decoder_1"):
    return tf.tanh(gen_deconv(h, channels))


def reference_flags(model_config, multipliers=None):
  """The reference's flags (neef, nsef, exdim, shdim, ndf, ...) of one of our model configs."""
  c = ModelConfig.from_mapping(model_config)
  ours_to_theirs = {new.split(".")[1]: old.split(".")[1] for old, new in RENAMED.items()}
  values = {theirs: getattr(c, ours) for ours, theirs in ours_to_theirs.items()}
  values.update(architecture=c.architecture, num_classes=c.num_classes,
                decAct="relu" if c.output_relu else "None", multipliers=multipliers,
                latent_resolution=c.latent_resolution)
  return ml_collections.ConfigDict(values)


def reference_model(x, y, a):
  """zs_vae_model.py (features) or vae_model.py (images) at test time: every output by name."""
  features = a.architecture == "features"
  flat = a.architecture == "flat"
  out = {}
  for domain, v in (("X", x), ("Y", y)):
    with v1.variable_scope(f"{domain}_encoder"):
      if features:
        q_mean, q_logvar, _ = zs_encoder(v, "vae_individual_exclusive_encoder", a.neef, a.exdim)
        r_mean, r_logvar, hidden = zs_encoder(v, "vae_individual_shared_encoder", a.nsef, a.shdim)
      else:
        q_mean, q_logvar = image_exclusive_encoder(v, a, flat)
        r_mean, r_logvar, hidden = image_shared_encoder(v, a, flat)
    d = domain.lower()
    out.update({f"q_z{d}_mean": q_mean, f"q_z{d}_logvar": q_logvar, f"r_zs_{d}_mean": r_mean,
                f"r_zs_{d}_logvar": r_logvar, f"h_{d}": hidden})
  with v1.variable_scope("S_encoder"):
    if features:
      out["q_zs_mean"], out["q_zs_logvar"] = dense_shared_posterior(
          out["h_x"], out["h_y"], "vae_shared_encoder", a.nsef * 4, a.shdim)
    else:
      out["q_zs_mean"], out["q_zs_logvar"] = image_shared_posterior(out["h_x"], out["h_y"], a, flat)
  for name in ("q_zx", "q_zy", "q_zs", "r_zs_x", "r_zs_y"):
    out[f"{name}_logvar"] = tf.minimum(out[f"{name}_logvar"], 9.21035)
  decoder = zs_decoder if features else image_decoder
  for domain, v in (("X", x), ("Y", y)):
    d = domain.lower()
    # The reference's copies of a decoder: from q(z_s|x,y) first, then reusing its variables.
    sources = {f"{d}_recon": "q_zs", f"{d}_from_x": "r_zs_x", f"{d}_from_y": "r_zs_y"}
    with v1.name_scope(f"{domain}_decoder_noise"):
      for i, (name, source) in enumerate(sources.items()):
        with v1.variable_scope(f"{domain}_decoder", reuse=i > 0 or None):
          out[name] = decoder(out[f"{source}_mean"], out[f"q_z{d}_mean"], int(v.shape[-1]), a)
  if a.num_classes:
    with v1.variable_scope("C_decoder"), v1.variable_scope("classifier"):
      out["logits"] = gen_fc(out["q_zs_mean"], a.num_classes)
  return out


def add_training_variables(out, x):
  """What the reference's training graph adds: global_step, Adam (slots, beta powers), loss averages."""
  global_step = v1.train.get_or_create_global_step()
  with v1.name_scope("recon_X_loss"):
    recon_x = 10.0 * tf.reduce_mean(tf.abs(out["x_recon"] - x))
  with v1.name_scope("joint_loss"):
    joint = recon_x + tf.add_n([tf.reduce_mean(t) for t in out.values()])
  # The slots Adam creates for every trainable variable (the gradients' values do not matter here).
  trainable = v1.trainable_variables()
  v1.train.AdamOptimizer(2e-4, 0.5).apply_gradients([(tf.zeros_like(v), v) for v in trainable])
  v1.train.ExponentialMovingAverage(decay=0.99).apply([recon_x, joint])
  return global_step


def random_value(name, shape, rng):
  """Values of a trained-looking network: biases and running statistics far from their init."""
  leaf = name.split("/")[-1]
  if leaf == "kernel":
    fan_in = 4 * shape[-1] if "conv2d_transpose" in name else int(np.prod(shape[:-1]))
    return rng.standard_normal(shape) / np.sqrt(fan_in)
  if leaf == "gamma":
    return 1.0 + 0.2 * rng.standard_normal(shape)
  if leaf == "moving_variance":
    return rng.uniform(0.5, 2.0, shape)
  return 0.3 * rng.standard_normal(shape)   # bias, beta, moving_mean; Adam slots


def write_reference_checkpoint(directory, model_config, multipliers=None, batch=3, seed=0):
  """A checkpoint as the reference's Saver writes it; returns (prefix, inputs, TF outputs)."""
  a = reference_flags(model_config, multipliers)
  model = models.build_model(model_config)
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (batch,) + model.x_shape).astype(np.float32)
  y = rng.uniform(-1, 1, (batch,) + model.y_shape).astype(np.float32)
  graph = tf.Graph()
  with graph.as_default():
    x_in, y_in = v1.placeholder(tf.float32, x.shape), v1.placeholder(tf.float32, y.shape)
    out = reference_model(x_in, y_in, a)
    global_step = add_training_variables(out, x_in)
    everything = v1.global_variables()
    # Each variable's initializer is fed its value (no assignment ops to build).
    values = {v.initializer.inputs[1]: (
        GLOBAL_STEP if v is global_step else
        random_value(v.op.name, v.shape.as_list(), rng).astype(v.dtype.base_dtype.as_numpy_dtype))
        for v in everything}
    with v1.Session(graph=graph) as session:
      session.run([v.initializer for v in everything], values)
      outputs = session.run(out, {x_in: x, y_in: y})
      prefix = v1.train.Saver(everything).save(session, os.path.join(str(directory), "model"),
                                               global_step=GLOBAL_STEP)
  return prefix, (x, y), outputs


def reference_variables(model_config, multipliers=None):
  """{name: shape} of the network variables (trainable and running statistics) of the reference graph."""
  a = reference_flags(model_config, multipliers)
  model = models.build_model(model_config)
  with tf.Graph().as_default():
    reference_model(v1.placeholder(tf.float32, (2,) + model.x_shape),
                    v1.placeholder(tf.float32, (2,) + model.y_shape), a)
    return ({v.op.name: tuple(v.shape.as_list()) for v in v1.global_variables()},
            sum(int(np.prod(v.shape.as_list())) for v in v1.trainable_variables()))


def write_checkpoint(directory, arrays, step=GLOBAL_STEP):
  """A v1 Saver checkpoint holding exactly `arrays` ({name: value}) and global_step."""
  with tf.Graph().as_default() as graph:
    variables = [v1.get_variable(name, initializer=value) for name, value in arrays.items()]
    variables.append(v1.get_variable("global_step", initializer=np.int64(step)))
    with v1.Session(graph=graph) as session:
      session.run(v1.global_variables_initializer())
      return v1.train.Saver(variables).save(session, os.path.join(str(directory), "model"), global_step=step)


def read_all(prefix):
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(prefix)}


def tiny_image_config(architecture, **overrides):
  config = tiny_model_config(architecture)
  config.update(dict(resolution=32, latent_resolution=2), **overrides)
  return config


TINY = {
    "features": (tiny_model_config("features", num_classes=5), None),
    "spatial": (tiny_image_config("spatial"), TINY_MULTIPLIERS),
    "flat": (tiny_image_config("flat"), TINY_MULTIPLIERS),
}


@pytest.fixture(scope="module")
def reference_checkpoints(tmp_path_factory):
  """{architecture: (prefix, inputs, TF outputs)} of the tiny models, written once."""
  return {arch: write_reference_checkpoint(tmp_path_factory.mktemp(arch), config, multipliers)
          for arch, (config, multipliers) in TINY.items()}


# ---------------------------------------------------------------------------
# Each mapping, one layer at a time


def test_a_transposed_convolution_kernel_is_flipped_and_its_in_out_axes_swapped():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
  theirs = rng.standard_normal((4, 4, 7, 3)).astype(np.float32)          # [h, w, out, in]
  reference = tf.nn.conv2d_transpose(x, theirs, [2, 10, 10, 7], strides=2, padding="SAME").numpy()
  transform = convert.TRANSFORMS["flip_transpose"]
  kernel = transform.apply(theirs)
  assert transform.reference_shape(kernel.shape) == theirs.shape
  ours = layers.ConvTranspose(7, use_bias=False).apply({"params": {"kernel": kernel}}, x)
  flax_layer = nn.ConvTranspose(7, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)
  assert relative_error(ours, reference) <= TOLERANCE
  assert relative_error(flax_layer.apply({"params": {"kernel": kernel}}, x), reference) <= TOLERANCE
  unflipped = np.transpose(theirs, (0, 1, 3, 2))                          # the swap alone is wrong
  assert relative_error(layers.ConvTranspose(7, use_bias=False).apply(
      {"params": {"kernel": unflipped}}, x), reference) > 0.1


def test_convolution_and_dense_kernels_are_used_as_stored():
  rng = np.random.default_rng(2)
  image = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  kernel, bias = rng.standard_normal((4, 4, 3, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
  reference = (tf.nn.conv2d(image, kernel, strides=2, padding="SAME") + bias).numpy()
  assert relative_error(layers.conv(5).apply({"params": {"kernel": kernel, "bias": bias}}, image),
                        reference) <= TOLERANCE
  v = rng.standard_normal((2, 6)).astype(np.float32)
  kernel, bias = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
  assert relative_error(layers.dense(4).apply({"params": {"kernel": kernel, "bias": bias}}, v),
                        (tf.matmul(v, kernel) + bias).numpy()) <= TOLERANCE


def test_batch_norm_variables_become_scale_bias_and_the_running_statistics():
  rng = np.random.default_rng(3)
  h = rng.standard_normal((4, 3, 3, 6)).astype(np.float32)
  gamma, beta, mean = (rng.standard_normal(6).astype(np.float32) for _ in range(3))
  variance = rng.uniform(0.1, 3.0, 6).astype(np.float32)
  reference = tf.nn.batch_normalization(h, mean, variance, beta, gamma, 1e-5).numpy()
  by_name = {e.reference.split("/")[-1]: e for e in convert.variable_table(TINY["spatial"][0])
             if e.reference.startswith("X_decoder/vae_decoder_2/batch_normalization/")}
  assert {k: (by_name[k].collection, by_name[k].path.split("/")[-1]) for k in by_name} == {
      "gamma": ("params", "scale"), "beta": ("params", "bias"),
      "moving_mean": ("batch_stats", "mean"), "moving_variance": ("batch_stats", "var")}
  ours = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5).apply(
      {"params": {"scale": gamma, "bias": beta}, "batch_stats": {"mean": mean, "var": variance}}, h)
  assert relative_error(ours, reference) <= TOLERANCE


def test_a_bias_before_a_batch_norm_is_taken_from_the_reference_and_matters_at_inference():
  rng = np.random.default_rng(4)
  v = rng.standard_normal((5, 6)).astype(np.float32)
  kernel = rng.standard_normal((6, 4)).astype(np.float32)
  bias, mean = 2.0 + rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
  variance, gamma, beta = np.full(4, 0.5, np.float32), np.ones(4, np.float32), np.zeros(4, np.float32)
  reference = tf.nn.batch_normalization(tf.matmul(v, kernel) + bias, mean, variance, beta, gamma, 1e-5).numpy()

  def ours(pre_norm_bias):
    h = layers.PreNorm("dense", 4).apply({"params": {"Dense_0": {"kernel": kernel}, "bias": pre_norm_bias}}, v)
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(
        {"params": {"scale": gamma, "bias": beta}, "batch_stats": {"mean": mean, "var": variance}}, h)
  assert relative_error(ours(bias), reference) <= TOLERANCE
  assert relative_error(ours(np.zeros(4, np.float32)), reference) > 0.1   # a zero bias would be wrong
  table = convert.variable_table(TINY["features"][0])
  entry = next(e for e in table if e.reference == "X_encoder/vae_individual_exclusive_encoder_1/dense/bias")
  assert (entry.collection, entry.path) == ("params", "exclusive_encoder_x/PreNorm_0/bias")


def test_only_the_transposed_convolution_kernels_are_transformed():
  for config in (recipes.mnist_cdcb().model, recipes.cars().model, recipes.sketchy(1).model):
    for e in convert.variable_table(config):
      deconv_kernel = e.reference.endswith("conv2d_transpose/kernel")
      assert e.transform == ("flip_transpose" if deconv_kernel else "copy"), e


# ---------------------------------------------------------------------------
# Whole networks: every output of the reference graph


@pytest.mark.parametrize("architecture", ["features", "spatial", "flat"])
def test_converted_networks_compute_what_the_reference_graph_computes(architecture, reference_checkpoints):
  prefix, (x, y), theirs = reference_checkpoints[architecture]
  config = TINY[architecture][0]
  model = models.build_model(config)
  variables = convert.from_reference(prefix, config)
  ours = model.apply(variables, x, y)
  pairs = {"x_recon": ours["x_recon"], "y_recon": ours["y_recon"]}
  for name in ("q_zx", "q_zy", "q_zs", "r_zs_x", "r_zs_y"):
    pairs[f"{name}_mean"], pairs[f"{name}_logvar"] = ours[name].mean, ours[name].logvar
  # The decoder copies the reference builds with reuse=True: the same variables, other latents.
  for d in ("x", "y"):
    for source in ("x", "y"):
      pairs[f"{d}_from_{source}"] = model.apply(variables, ours[f"r_zs_{source}"].mean,
                                                ours[f"q_z{d}"].mean, d, method=models.IIAE.decode)
  if architecture == "features":
    pairs["logits"] = ours["logits"]
  errors = {name: relative_error(value, theirs[name]) for name, value in pairs.items()}
  assert max(errors.values()) <= TOLERANCE, errors
  # The test-time embeddings (retrieval) come from the same networks.
  assert relative_error(shared_embedding(model, variables, x, "x"), theirs["r_zs_x_mean"]) <= TOLERANCE
  assert relative_error(shared_embedding(model, variables, y, "y"), theirs["r_zs_y_mean"]) <= TOLERANCE
  assert relative_error(exclusive_embedding(model, variables, y, "y"), theirs["q_zy_mean"]) <= TOLERANCE


@pytest.mark.parametrize("architecture", ["features", "spatial", "flat"])
def test_the_decoder_copies_share_one_set_of_variables_which_the_table_reads(architecture, reference_checkpoints):
  prefix = reference_checkpoints[architecture][0]
  names = [name for name, _ in tf.train.list_variables(prefix)]
  network = {n for n in names if convert.skipped_kind(n) is None}
  decoder = {n for n in network if n.startswith("X_decoder/")}
  table = {e.reference for e in convert.variable_table(TINY[architecture][0])}
  assert decoder and decoder <= table and network == table
  # One variable per layer: no copy made its own (`dense_1`, `batch_normalization_1`, ...).
  assert {n.split("/")[-2] for n in decoder} <= {"dense", "conv2d_transpose", "batch_normalization"}


def test_a_checkpoint_is_read_whole_and_its_training_variables_are_skipped(reference_checkpoints, caplog):
  prefix = reference_checkpoints["spatial"][0]
  names = [name for name, _ in tf.train.list_variables(prefix)]
  with caplog.at_level("INFO"):
    variables, step, skipped = convert.read_reference(prefix, TINY["spatial"][0])
  assert step == GLOBAL_STEP
  slots = [n for n in names if n.endswith(("/Adam", "/Adam_1"))]
  assert skipped == {"Adam slots": len(slots), "Adam's beta powers": 2, "global_step": 1, "loss averages": 2}
  assert len(slots) == 2 * len([e for e in convert.variable_table(TINY["spatial"][0]) if e.collection == "params"])
  stored = read_all(prefix)
  for e in convert.variable_table(TINY["spatial"][0]):
    ours = variables[e.collection]
    for key in e.path.split("/"):
      ours = ours[key]
    np.testing.assert_array_equal(ours, convert.TRANSFORMS[e.transform].apply(stored[e.reference]))
  lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  assert len(lines) == 1 and f"skipped {sum(skipped.values())} other variables" in lines[0]


# ---------------------------------------------------------------------------
# The paper's configs at 256x256 and 512-d features: names and shapes only


# Facades and Maps have MNIST-CDCB's model (test_the_documented_tables_are_the_converters).
PAPER_MODELS = {
    "sketchy_split1": (recipes.sketchy(1), None, 2_477_284),
    "sketchy_split2": (recipes.sketchy(2), None, 2_477_284 + 4 * 65),   # 104 classes
    "mnist_cdcb": (recipes.mnist_cdcb(), REFERENCE_MULTIPLIERS, 16_801_830),
    "cars": (recipes.cars(), REFERENCE_MULTIPLIERS, 46_952_230),
}


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_the_table_of_each_paper_config_names_every_reference_variable_with_its_shape(name):
  config, multipliers, parameters = PAPER_MODELS[name]
  theirs, trainable = reference_variables(config.model, multipliers)
  table = convert.variable_table(config.model)
  assert {e.reference: e.reference_shape for e in table} == theirs
  assert trainable == parameters


def test_the_documented_tables_are_the_converters():
  doc = open(os.path.join(ROOT, "docs", "reference_checkpoints.md")).read()
  for config in (recipes.sketchy(1), recipes.mnist_cdcb(), recipes.cars()):
    assert convert.markdown_table(config.model) in doc
  # One table serves the three spatial datasets, and split 2 differs only in its classifier.
  assert recipes.facades().model == recipes.mnist_cdcb().model == recipes.maps().model
  split1, split2 = (convert.variable_table(recipes.sketchy(s).model) for s in (1, 2))
  assert [(e.path, e.reference) for e in split1] == [(e.path, e.reference) for e in split2]
  assert {e.path for e, f in zip(split1, split2) if e.shape != f.shape} == {"classifier/kernel", "classifier/bias"}


# ---------------------------------------------------------------------------
# The converted workdir


def tiny_digits_config():
  config = recipes.digits_cdcb()
  config.data.options.copies = 1
  config.model = TINY["spatial"][0]
  config.evals = ml_collections.ConfigDict({"paired_retrieval": {"type": "paired_retrieval", "split": "test"}})
  return config


def test_the_converted_workdir_evaluates_like_the_converted_variables(tmp_path, reference_checkpoints):
  config = tiny_digits_config()
  prefix = reference_checkpoints["spatial"][0]
  workdir = tmp_path / "authors"
  path = convert.convert_to_workdir(config, prefix, str(workdir), argv=["convert", "--flags"])
  assert path == str(workdir / "checkpoints" / str(GLOBAL_STEP))

  results = evaluate.evaluate_checkpoint(config, str(workdir), echo=None)
  run = run_config.parse(config)
  model, variables = models.build_model(run.model), convert.from_reference(prefix, run.model)
  direct = evaluation.EvaluationSuite.from_config(run)(model, variables, GLOBAL_STEP, str(tmp_path / "direct"))
  assert results["checkpoint"]["step"] == GLOBAL_STEP
  assert results["metrics"] == pytest.approx(direct, abs=0)
  assert any("paired_retrieval/" in k for k in results["metrics"])

  optimizer = make_optimizer(run.optimizer)
  checkpoints = checkpointing.Checkpoints(str(workdir / "checkpoints"), max_to_keep=None)
  try:
    state, record, step = checkpoints.restore(abstract_train_state(run.seed, model, optimizer))
  finally:
    checkpoints.close()
  fresh = create_train_state(run.seed, model, optimizer)
  assert step == GLOBAL_STEP and int(state.step) == GLOBAL_STEP and int(state.fault_step) == -1
  np.testing.assert_array_equal(state.rng, fresh.rng)
  assert all(not np.any(a) for a in jax.tree.leaves(state.opt_state))   # fresh Adam: zero moments, count 0
  restored, converted = flat_leaves(state.variables), flat_leaves(variables)
  assert restored.keys() == converted.keys()
  for key, value in converted.items():
    np.testing.assert_array_equal(restored[key], value)
  assert record["config"] == run.record
  assert record["origin"]["reference_checkpoint"] == prefix and record["origin"]["global_step"] == GLOBAL_STEP
  assert json.loads((workdir / "config.json").read_text()) == json.loads(json.dumps(run.tree, default=str))
  assert (workdir / "command.txt").read_text() == "convert --flags\n"


def test_the_command_line_writes_the_workdir_and_says_how_to_evaluate_it(tmp_path, reference_checkpoints):
  prefix = reference_checkpoints["features"][0]
  overrides = [f"--config.model.{k}={v}" for k, v in TINY["features"][0].items()]
  workdir = tmp_path / "authors"
  done = run([sys.executable, "-m", "iiae_jax.convert", "--config=configs/digits_zs.py", *overrides,
              f"--reference_checkpoint={prefix}", f"--workdir={workdir}"],
             cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == (f"wrote {workdir}/checkpoints/{GLOBAL_STEP}; evaluate it with: python eval.py "
                                 f"--config=configs/digits_zs.py --workdir={workdir}")
  assert "skipped 125 other variables (Adam slots: 120" in done.stderr
  assert "orbax" not in done.stderr   # the library's chatter is kept out of the log
  checkpoints = checkpointing.Checkpoints(str(workdir / "checkpoints"), max_to_keep=None)
  try:
    assert checkpoints.steps() == [GLOBAL_STEP]
    assert checkpoints.read_meta()["origin"]["reference_checkpoint"] == prefix
  finally:
    checkpoints.close()
  assert (workdir / "command.txt").read_text().startswith(os.path.join(ROOT, "iiae_jax", "convert.py"))


# ---------------------------------------------------------------------------
# Bad input: one IIAEError naming the culprit, and nothing written


def _refused(tmp_path, prefix, model_config, error):
  """Converts into a new workdir expecting `error`; returns its message, checking nothing was written."""
  config = recipes.digits_zs() if model_config.architecture == "features" else recipes.digits_cdcb()
  config.model = model_config
  workdir = tmp_path / "refused"
  with pytest.raises(error) as raised:
    convert.convert_to_workdir(config, prefix, str(workdir))
  assert not workdir.exists()
  message = str(raised.value)
  assert "\n" not in message
  return message


def test_a_checkpoint_of_another_architecture_is_refused_naming_both(tmp_path, reference_checkpoints):
  message = _refused(tmp_path, reference_checkpoints["features"][0], tiny_image_config("spatial"),
                     ConfigMismatchError)
  assert "it holds a features IIAE of the reference and the config a spatial one (model.architecture)" in message
  table = convert.variable_table(tiny_image_config("spatial"))
  theirs = {n for n, _ in tf.train.list_variables(reference_checkpoints["features"][0])
            if convert.skipped_kind(n) is None}
  ours = [e.reference for e in table]
  missing = [n for n in ours if n not in theirs]
  assert f"network variables {len(missing)} missing, {len(theirs - set(ours))} unexpected" in message
  assert f"(model.architecture); network variables {len(missing)} missing" in message
  assert f": missing {missing[0]} (4, 4, 3, 4); missing {missing[1]} (4,);" in message   # listed first


def test_a_checkpoint_of_another_dataset_is_refused_naming_the_shapes(tmp_path, reference_checkpoints):
  other = tiny_model_config("features", num_classes=7)   # another number of training classes
  message = _refused(tmp_path, reference_checkpoints["features"][0], other, ConfigMismatchError)
  assert "C_decoder/classifier/dense/kernel is (4, 5) in the checkpoint, (4, 7) for the config" in message
  assert "2 of another shape or dtype" in message


def test_a_checkpoint_of_another_size_is_refused_listing_what_differs(tmp_path, reference_checkpoints):
  wider = tiny_image_config("flat", shared_width=8)
  message = _refused(tmp_path, reference_checkpoints["flat"][0], wider, ConfigMismatchError)
  assert ("X_encoder/vae_individual_shared_encoder_1/conv2d/kernel is (4, 4, 3, 4) in the checkpoint, "
          "(4, 4, 3, 8) for the config") in message
  assert "; and " in message and "more" in message   # the rest counted, not listed


def test_missing_and_unexpected_network_variables_are_refused_by_name(tmp_path, reference_checkpoints):
  arrays = {n: a for n, a in read_all(reference_checkpoints["spatial"][0]).items()
            if convert.skipped_kind(n) is None}   # the network variables, edited:
  lost = arrays.pop("Y_decoder/vae_decoder_1/conv2d_transpose/bias")
  arrays["Y_decoder/vae_decoder_0/conv2d_transpose/bias"] = lost
  prefix = write_checkpoint(tmp_path / "edited", arrays)
  message = _refused(tmp_path, prefix, TINY["spatial"][0], ConfigMismatchError)
  assert "1 missing, 1 unexpected" in message
  assert "missing Y_decoder/vae_decoder_1/conv2d_transpose/bias (3,)" in message
  assert "unexpected Y_decoder/vae_decoder_0/conv2d_transpose/bias (3,)" in message


def copy_checkpoint(prefix, directory):
  directory.mkdir()
  for path in glob.glob(glob.escape(prefix) + ".*"):
    shutil.copy(path, directory)
  return str(directory / os.path.basename(prefix))


def test_a_truncated_or_absent_data_file_is_refused_naming_it(tmp_path, reference_checkpoints):
  prefix = copy_checkpoint(reference_checkpoints["features"][0], tmp_path / "copy")
  data = prefix + ".data-00000-of-00001"
  content = open(data, "rb").read()
  with open(data, "wb") as f:
    f.write(content[:len(content) // 3])
  message = _refused(tmp_path, prefix, TINY["features"][0], CheckpointError)
  assert f"cannot be read from {data}" in message and "truncated or damaged" in message
  os.remove(data)
  message = _refused(tmp_path, prefix, TINY["features"][0], CheckpointError)
  assert message.startswith(f"reference checkpoint {prefix} has no complete set of data files")


def test_a_path_that_is_not_a_checkpoint_prefix_is_refused_with_the_prefix_to_use(tmp_path, reference_checkpoints):
  prefix = reference_checkpoints["features"][0]
  config = TINY["features"][0]
  folder = os.path.dirname(prefix)
  assert f"give a checkpoint prefix such as {prefix}" in _refused(tmp_path, folder, config, CheckpointError)
  assert f"give the prefix {prefix}" in _refused(tmp_path, prefix + ".index", config, CheckpointError)
  assert f"give the prefix {prefix}" in _refused(tmp_path, prefix + ".data-00000-of-00001", config,
                                                 CheckpointError)
  assert f"{prefix}-9.index does not exist" in _refused(tmp_path, prefix + "-9", config, CheckpointError)
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "holds no TensorFlow checkpoint" in _refused(tmp_path, str(empty), config, CheckpointError)


def test_a_damaged_index_is_refused_naming_it(tmp_path, reference_checkpoints):
  prefix = copy_checkpoint(reference_checkpoints["features"][0], tmp_path / "copy")
  content = open(prefix + ".index", "rb").read()
  with open(prefix + ".index", "wb") as f:
    f.write(content[:len(content) // 2])
  message = _refused(tmp_path, prefix, TINY["features"][0], CheckpointError)
  assert f"{prefix}.index cannot be read" in message


def test_a_workdir_that_holds_checkpoints_is_refused_and_left_as_it_is(tmp_path, reference_checkpoints):
  workdir = tmp_path / "used"
  (workdir / "checkpoints" / "100").mkdir(parents=True)
  config = recipes.digits_zs()
  config.model.update(TINY["features"][0].to_dict())
  with pytest.raises(UsageError, match="already holds checkpoints"):
    convert.convert_to_workdir(config, reference_checkpoints["features"][0], str(workdir))
  assert [p.name for p in workdir.rglob("*")] == ["checkpoints", "100"]


def test_without_tensorflow_the_error_names_the_extra(monkeypatch, reference_checkpoints):
  monkeypatch.setitem(sys.modules, "tensorflow", None)   # `import tensorflow` now raises ImportError
  with pytest.raises(UsageError, match=r'pip install "iiae_jax\[convert\]"'):
    convert.from_reference(reference_checkpoints["features"][0], TINY["features"][0])
