"""One process of a multi-process training test (run by tests/test_multihost.py).

usage: multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR OUT.npz [NUM_STEPS [HEARTBEAT_TIMEOUT_S]]
With NUM_PROCESSES == 1 it is the single-process reference (devices from XLA_FLAGS).
HEARTBEAT_TIMEOUT_S sets config.distributed.heartbeat_timeout_seconds, for the
tests that kill one of the processes.
"""
import sys

import jax


def main(pid, nproc, port, workdir, out, num_steps=4, heartbeat_timeout=0):
  if nproc > 1:
    jax.config.update("jax_num_cpu_devices", 2)
  import numpy as np
  from iiae_jax import trainer
  from tests.helpers import flat_leaves, tiny_train_config
  config = tiny_train_config("digits_cdcb", num_steps=num_steps)
  if nproc > 1:
    config.distributed.update(dict(enabled=True, coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=nproc, process_id=pid))
  if heartbeat_timeout:
    config.distributed.heartbeat_timeout_seconds = heartbeat_timeout
  state = trainer.train_and_evaluate(config, workdir)
  if pid == 0:
    np.savez(out, **flat_leaves(state.variables))
  print(f"process {pid}: {jax.process_count()} processes, {jax.device_count()} devices, "
        f"step {int(state.step)}", flush=True)


if __name__ == "__main__":
  a = sys.argv[1:]
  main(int(a[0]), int(a[1]), a[2], a[3], a[4], *(int(v) for v in a[5:]))
