"""Training inputs: what the host sends each compiled call, and how a device makes its batch.

Two kinds of input:
- zero-shot (Sketchy protocol): features stay resident on the devices and each
  step draws one sketch and one photo per training class with `jax.random`
  inside the compiled step — the host sends nothing;
- paired (image pairs): batch t is `epoch_batch_indices(seed, t)`; the data sit
  on the devices when they fit (the host sends indices) or are read on the
  host and sent (large image sets).

Either way the batch at step t is a pure function of (seed, t): the iterator
state is the step, so a resumed run sees exactly the batches an uninterrupted
one would.
"""
import concurrent.futures
import logging
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from iiae_jax import data as data_lib
from iiae_jax import parallel
from iiae_jax import run_config
from iiae_jax.config import ModelConfig
from iiae_jax.errors import ConfigError
from iiae_jax.data import sampling

RESIDENT_LIMIT_BYTES = 4 << 30


def check_model_fits_data(model: ModelConfig, example_x_shape, example_y_shape, where: str) -> None:
  x_shape, y_shape = model.input_shapes
  for name, got, want in (("x", example_x_shape, x_shape), ("y", example_y_shape, y_shape)):
    if tuple(got) != tuple(want):
      field = "model.x_dim/y_dim" if model.architecture == "features" else "model.resolution/channels"
      raise ConfigError(f"{where}: domain {name} examples have shape {tuple(got)} but the config "
                        f"expects {tuple(want)} ({field})")


class ZeroShotInput:
  """Class-balanced pairs: one sketch (X) and one photo (Y) of every training class per step."""
  kind = "zero_shot"

  def __init__(self, config, data: data_lib.ZeroShotData):
    run = run_config.parse(config)
    data.check_labels()  # labels index the rows and classes on the device, where a bad index is clamped silently
    self.num_classes = data.num_classes
    self.global_batch = run.training.batch_size or self.num_classes
    if self.global_batch != self.num_classes:
      raise ConfigError(f"training.batch_size = {run.training.batch_size}: a class-balanced batch "
                       f"holds one pair per training class, so it must be {self.num_classes} "
                       f"(the number of classes in {data.name}/{data.split}) or 0")
    check_model_fits_data(run.model, data.sketch.shape[1:], data.photo.shape[1:], f"{data.name}/{data.split}")
    self.per_device = parallel.check_batch_size(self.global_batch)
    # Reference epoch: #train sketches // batch steps.
    self.steps_per_epoch = len(data.sketch) // self.global_batch
    self.num_examples = len(data.sketch)
    self._resident = {
        "sketch": np.asarray(data.sketch, np.float32), "photo": np.asarray(data.photo, np.float32),
        "sketch_index": sampling.class_index(data.sketch_labels, self.num_classes, data.classes),
        "photo_index": sampling.class_index(data.photo_labels, self.num_classes, data.classes),
    }

  def resident(self) -> Dict[str, Any]:
    return self._resident

  def host_inputs(self, step: int, k: int):
    return np.zeros((jax.local_device_count(), k), np.int32)  # the step alone decides the batch

  def make_batch(self, inputs, resident, data_key):
    sketch_idx, photo_idx = sampling.class_balanced_batch(data_key, resident["sketch_index"],
                                                          resident["photo_index"])
    start = parallel.global_offset(self.per_device)
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, self.per_device)
    labels = start + jnp.arange(self.per_device)
    return resident["sketch"][take(sketch_idx)], resident["photo"][take(photo_idx)], labels


class PairedInput:
  """Instance-level pairs (x_i, y_i), shuffled per epoch, optionally flipped together."""
  kind = "paired"

  def __init__(self, config, data: data_lib.PairedData):
    run = run_config.parse(config)
    self.global_batch = run.training.batch_size
    self.num_examples = len(data)
    if self.global_batch <= 0 or self.global_batch > self.num_examples:
      raise ConfigError(f"training.batch_size = {self.global_batch} must be in [1, {self.num_examples}] "
                       f"(the size of {data.name}/{data.split})")
    check_model_fits_data(run.model, data.x.shape[1:], data.y.shape[1:], f"{data.name}/{data.split}")
    self.per_device = parallel.check_batch_size(self.global_batch)
    self.steps_per_epoch = sampling.steps_per_epoch(self.num_examples, self.global_batch)
    self.seed = run.seed
    self.flip = run.data.flip
    self.data = data
    nbytes = 4 * int(np.prod(data.x.shape)) + 4 * int(np.prod(data.y.shape))
    self.is_resident = run.training.resident_data and nbytes <= RESIDENT_LIMIT_BYTES
    if not self.is_resident:
      logging.info("%s/%s (%.1f GB) is read on the host and streamed", data.name, data.split, nbytes / 1e9)
    self._pool = concurrent.futures.ThreadPoolExecutor(1) if not self.is_resident else None
    self._pending: Optional[tuple] = None

  def resident(self, block: int = 256) -> Dict[str, Any]:
    if not self.is_resident:
      return {}
    # A block of pairs at a time: lazily decoded pairs are decoded once for both halves.
    out = {k: np.empty(getattr(self.data, k).shape, np.float32) for k in ("x", "y")}
    for start in range(0, len(self.data), block):
      idx = np.arange(start, min(start + block, len(self.data)))
      out["x"][idx], out["y"][idx] = self.data.x[idx], self.data.y[idx]
    return out

  def _indices(self, step: int, k: int) -> np.ndarray:
    """(local devices, k, per-device batch) global indices for steps step..step+k-1."""
    rows = [sampling.epoch_batch_indices(self.seed, step + i, self.num_examples, self.global_batch)
            [parallel.process_slice(self.global_batch)] for i in range(k)]
    return parallel.shard_host_array(np.stack(rows).astype(np.int32), axis=1)

  def _read(self, step: int, k: int):
    idx = self._indices(step, k)
    flat = self.data.batch(idx.reshape(-1))
    shape = idx.shape
    return {"x": flat["x"].reshape(shape + flat["x"].shape[1:]),
            "y": flat["y"].reshape(shape + flat["y"].shape[1:])}

  def host_inputs(self, step: int, k: int):
    if self.is_resident:
      return self._indices(step, k)
    # Read the requested chunk (prefetched when the previous call guessed right) and
    # start reading the next one while the devices work.
    if self._pending is not None and self._pending[0] == (step, k):
      out = self._pending[1].result()
    else:
      out = self._read(step, k)
    self._pending = ((step + k, k), self._pool.submit(self._read, step + k, k))
    return out

  def make_batch(self, inputs, resident, data_key):
    if self.is_resident:
      x, y = resident["x"][inputs], resident["y"][inputs]
    else:
      x, y = inputs["x"], inputs["y"]
    if self.flip:
      start = parallel.global_offset(self.per_device)
      keys = jax.vmap(lambda i: jax.random.fold_in(data_key, i))(start + jnp.arange(self.per_device))
      x, y = sampling.random_flip(keys, x, y)
    return x, y, None


def make_train_input(config):
  """The training input that `config.data` describes (a ConfigDict or a RunConfig)."""
  run = run_config.parse(config)
  data = data_lib.load_split(run.data, run.data.train_split)
  if isinstance(data, data_lib.ZeroShotData):
    return ZeroShotInput(run, data)
  return PairedInput(run, data)
