"""Devices and hosts: the one place that knows how a global batch is laid out.

A global batch of B examples is split over P processes and D local devices
each: process p holds examples [p*B/P, (p+1)*B/P) and its local device d the
contiguous block d of those, so global example i lives on global device
i // (B / (P*D)). Every random draw is keyed by the global example index, so a
run's results do not depend on P or D.
"""
import logging
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from iiae_jax.errors import ConfigError

AXIS = "batch"


def initialize(distributed) -> None:
  """Starts jax.distributed when `distributed.enabled` (a DistributedConfig; multi-host runs)."""
  if not distributed.enabled or jax.distributed.is_initialized():
    return
  kwargs = {}
  if distributed.coordinator_address:  # else JAX detects the cluster (TPU pods, SLURM, Open MPI)
    kwargs = dict(coordinator_address=distributed.coordinator_address,
                  num_processes=distributed.num_processes, process_id=distributed.process_id)
  # A peer that died (or lost its host) is detected after heartbeat_timeout_seconds:
  # every other process then stops with an error instead of blocking forever.
  jax.distributed.initialize(heartbeat_timeout_seconds=distributed.heartbeat_timeout_seconds,
                             shutdown_timeout_seconds=distributed.shutdown_timeout_seconds, **kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  connect_collectives()


def connect_collectives() -> None:
  """Connects the CPU collectives of the device groups that training uses while the processes are
  in step, just after jax.distributed starts (a collective).

  Gloo gives a peer 30 s (fixed) to join a device group's first collective; a collective of a
  group already connected waits --xla_cpu_collective_timeout_seconds (30 min). Connected here, a
  first step, check or checkpoint that one process reaches long after another (compiling or
  loading data on a busy host) waits for it instead of failing in "Gloo context initialization".
  """
  if jax.process_count() == 1 or jax.default_backend() != "cpu":
    return
  any_process(False)  # multihost_utils' programs: each local device with its peers on the other hosts
  every_device = jax.pmap(lambda x: jax.lax.psum(x, AXIS), axis_name=AXIS)  # the train call's group
  every_device(np.zeros(jax.local_device_count(), np.int32)).block_until_ready()


def is_main_process() -> bool:
  return jax.process_index() == 0


def check_batch_size(global_batch: int, num_devices: Optional[int] = None,
                     field: str = "training.batch_size") -> int:
  """The per-device batch; ConfigError when the global batch does not split evenly over
  `num_devices` (default: every device of every process)."""
  devices = num_devices or jax.device_count()
  if global_batch <= 0 or global_batch % devices:
    layout = "" if num_devices else (f" = {jax.process_count()} process(es) x "
                                     f"{jax.local_device_count()} local device(s)")
    raise ConfigError(f"{field} = {global_batch} must be a positive multiple of the number of "
                      f"devices ({devices}{layout})")
  return global_batch // devices


def process_slice(global_batch: int) -> slice:
  """This process's contiguous share of a global batch."""
  per_process = global_batch // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def shard_host_array(x: np.ndarray, axis: int = 0) -> np.ndarray:
  """Reshapes axis `axis` of a process-local array into (local devices, per device)."""
  d = jax.local_device_count()
  shape = x.shape[:axis] + (d, x.shape[axis] // d) + x.shape[axis + 1:]
  return np.moveaxis(x.reshape(shape), axis, 0)


def device_sharding() -> jax.sharding.NamedSharding:
  """The layout of pmap's per-device arrays: leading axis over the local devices, named AXIS."""
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree: Any) -> Any:
  """Copies a pytree of arrays onto every local device (leading axis = local devices).

  Laid out exactly as pmap lays out its outputs, so feeding pmap's outputs back
  in does not trigger a second compilation.
  """
  d = jax.local_device_count()
  sharding = device_sharding()
  return jax.tree.map(lambda a: jax.device_put(np.broadcast_to(np.asarray(a), (d,) + np.shape(a)), sharding),
                      tree)


def unreplicate(tree: Any) -> Any:
  """The first local device's copy of a replicated pytree, as host numpy arrays."""
  # The first device's buffer itself (its shard may keep the device axis): no slicing op per array.
  first = lambda a: (np.asarray(a.addressable_data(0)).reshape(a.shape[1:]) if isinstance(a, jax.Array)
                     else np.asarray(a[0]))
  return jax.tree.map(first, tree)


def global_offset(per_device_batch: int) -> jax.Array:
  """Global index of this device's first example (inside pmap over AXIS)."""
  return jax.lax.axis_index(AXIS) * per_device_batch


def any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def raise_together(error: Optional[BaseException], elsewhere: BaseException,
                   before_raising: Optional[Callable[[], None]] = None) -> None:
  """A collective: when `error` is set on any process, every process raises (its own `error`, or
  `elsewhere` where it has none), after calling `before_raising`; none goes on to wait in a
  later collective for a process that has stopped. Nothing happens when no process has one."""
  if any_process(error is not None):
    if before_raising is not None:
      before_raising()
    raise error if error is not None else elsewhere


def run_together(fn: Callable[[], Any], what: str) -> Any:
  """`fn()` on every process; when it raises on any, every process raises (a collective)."""
  result, error = None, None
  try:
    result = fn()
  except Exception as e:  # pylint: disable=broad-except  # raised below, on every process
    error = e
  raise_together(error, RuntimeError(f"{what} failed on another process (see its log)"))
  return result


def main_process_decides(flag: bool) -> bool:
  """Process 0's `flag`, on every process (a collective), so that every process takes the same
  branch into collective work (saving the best checkpoint) even where their numbers differ."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag))))
