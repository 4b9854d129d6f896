"""One process of a multi-process training test (run by tests/test_multihost.py).

usage: multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR OUT.npz [NUM_STEPS [HEARTBEAT_TIMEOUT_S
       [FAIL_EVAL_AT]]]
With NUM_PROCESSES == 1 it is the single-process reference (devices from XLA_FLAGS).
HEARTBEAT_TIMEOUT_S sets config.distributed.heartbeat_timeout_seconds, for the
tests that kill one of the processes. FAIL_EVAL_AT > 0 evaluates every 2 steps,
with scores that differ between the processes (process 0's should decide which
checkpoint is kept as the best), and makes process 1's evaluation raise at that step;
FAIL_EVAL_AT == -1 makes process 1's evaluation fail to load its data, before the first step.

usage: multihost_worker.py --two-managers PROCESS_ID NUM_PROCESSES PORT DIRECTORY ROUNDS
saves ROUNDS steps into two checkpoint managers at once (the trainer's checkpoints/ and best/).

usage: multihost_worker.py --damaged-on-one PROCESS_ID NUM_PROCESSES PORT DIRECTORY
saves steps 1-3, then restores the newest with process 1 reading step 3 as damaged.

usage: multihost_worker.py --unseen-on-one PROCESS_ID NUM_PROCESSES PORT WORKDIR
trains 2 steps, then trains on with process 1 not seeing the checkpoints.

usage: multihost_worker.py --hang-on-one PROCESS_ID NUM_PROCESSES PORT WORKDIR STEP_TIMEOUT_S
trains 8 steps, with process 1's read of step 5's data hanging (a wedged filesystem).

usage: multihost_worker.py --late-on-one PROCESS_ID NUM_PROCESSES PORT DIRECTORY SECONDS PMAP
starts jax.distributed, then process 1 reaches the first collective SECONDS late: a check
(parallel.any_process) or, with PMAP = 1, a pmapped mean over every device.
"""
import sys
import time

import jax


def main(pid, nproc, port, workdir, out, num_steps=4, heartbeat_timeout=0, fail_eval_at=0,
         step_timeout=0):
  if nproc > 1:
    jax.config.update("jax_num_cpu_devices", 2)
  import numpy as np
  from iiae_jax import trainer
  from tests.helpers import FunctionSuite, flat_leaves, tiny_train_config
  config = tiny_train_config("digits_cdcb", num_steps=num_steps)
  if nproc > 1:
    config.distributed.update(dict(enabled=True, coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=nproc, process_id=pid))
  if heartbeat_timeout:
    config.distributed.heartbeat_timeout_seconds = heartbeat_timeout
  if step_timeout:
    config.distributed.step_timeout_seconds = step_timeout
  evaluate = None
  if fail_eval_at:
    config.training.eval_every = 2

    def evaluate_fn(model, variables, step):
      if pid == 1 and step == fail_eval_at:
        raise RuntimeError(f"evaluation broke on process 1 at step {step}")
      score = step / 10 if pid == 0 else 0.0
      return {"valid/pr/shared_x_to_y": score, "valid/pr/shared_y_to_x": score,
              "valid/pr/exclusive_x_to_y_hits": 0, "valid/pr/exclusive_y_to_x_hits": 0}
    evaluate = FunctionSuite(evaluate_fn, name="pr")
  if fail_eval_at == -1 and pid == 1:
    def prepare():
      raise FileNotFoundError("process 1 cannot read its evaluation split")
    evaluate.prepare = prepare
  state = trainer.train_and_evaluate(config, workdir, evaluations=evaluate)
  if pid == 0:
    np.savez(out, **flat_leaves(state.variables))
  print(f"process {pid}: {jax.process_count()} processes, {jax.device_count()} devices, "
        f"step {int(state.step)}", flush=True)


def _initialize(pid, nproc, port):
  from iiae_jax import parallel
  from iiae_jax.config import DistributedConfig
  parallel.initialize(DistributedConfig(
      enabled=True, coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid,
      heartbeat_timeout_seconds=30))


def two_managers(pid, nproc, port, directory, rounds):
  import numpy as np
  from iiae_jax import checkpointing
  _initialize(pid, nproc, port)
  if pid == 1:  # a loaded peer: its background threads finish each save late
    import orbax.checkpoint as ocp
    finalize = ocp.CheckpointManager._finalize  # pylint: disable=protected-access

    def late_finalize(self, *args, **kwargs):
      time.sleep(0.5)
      return finalize(self, *args, **kwargs)
    ocp.CheckpointManager._finalize = late_finalize  # pylint: disable=protected-access
  latest = checkpointing.Checkpoints(f"{directory}/checkpoints")
  best = checkpointing.Checkpoints(f"{directory}/best", 1)
  for step in range(1, rounds + 1):  # each save's finishing runs in the background, alongside the other's
    best.save(step, {"w": np.full(1000, step, np.float32)}, {"score": step}, force=True, replace=True)
    latest.save(step, {"w": np.full(1000, -step, np.float32)}, {}, force=True)
  best.close()
  latest.close()
  print(f"process {pid}: saved {rounds} steps into both", flush=True)


def damaged_on_one(pid, nproc, port, directory):
  import numpy as np
  from iiae_jax import checkpointing
  _initialize(pid, nproc, port)
  checkpoints = checkpointing.Checkpoints(directory, max_to_keep=None)
  for step in (1, 2, 3):
    checkpoints.save(step, {"w": np.full(1000, step, np.float32)}, {"step": step}, force=True)
  checkpoints.wait()
  if pid == 1:  # a flipped bit that only this host reads (its copy of a file differs)
    verify = checkpointing._verify_checksums  # pylint: disable=protected-access

    def damaged_newest(state, recorded):
      if float(np.asarray(state["w"])[0]) == 3:
        raise checkpointing.ChecksumError("process 1 reads step 3 with a flipped bit")
      return verify(state, recorded)
    checkpointing._verify_checksums = damaged_newest  # pylint: disable=protected-access
  state, _, step = checkpoints.restore({"w": np.zeros(1000, np.float32)}, set_aside_damaged=True)
  checkpoints.close()
  print(f"process {pid}: restored step {step} holding {float(np.asarray(state['w'])[0])}", flush=True)


def unseen_on_one(pid, nproc, port, workdir):
  from iiae_jax import checkpointing
  main(pid, nproc, port, workdir, f"{workdir}.npz", 2)
  if pid == 1:  # its host does not see the files (a stale network-filesystem listing)
    checkpointing.Checkpoints.steps = lambda self: []
  main(pid, nproc, port, workdir, f"{workdir}.npz", 4)


def hang_on_one(pid, nproc, port, workdir, step_timeout):
  from iiae_jax import input_pipeline
  if pid == 1:
    read = input_pipeline.PairedInput.host_inputs

    def hanging(self, step, k):
      if step == 5:
        print(f"process {pid}: the read of step {step}'s data hangs", flush=True)
        time.sleep(3600)
      return read(self, step, k)
    input_pipeline.PairedInput.host_inputs = hanging
  main(pid, nproc, port, workdir, f"{workdir}.npz", 8, 10, 0, step_timeout)


def late_on_one(pid, nproc, port, directory, seconds, pmap):
  import numpy as np
  from iiae_jax import parallel
  jax.config.update("jax_num_cpu_devices", 2)
  _initialize(pid, nproc, port)
  if pid == 1:
    time.sleep(seconds)
  what = "pmapped mean" if pmap else "check"
  start = time.monotonic()
  if pmap:
    mean = jax.pmap(lambda x: jax.lax.pmean(x, parallel.AXIS), axis_name=parallel.AXIS)
    result = float(np.asarray(mean(np.full(jax.local_device_count(), float(pid))))[0])
  else:
    result = parallel.any_process(pid == 1)
  print(f"process {pid}: waited {time.monotonic() - start:.0f} s in its first {what}: {result}", flush=True)


MODES = {"--two-managers": two_managers, "--damaged-on-one": damaged_on_one,
         "--unseen-on-one": unseen_on_one, "--hang-on-one": hang_on_one,
         "--late-on-one": late_on_one}


if __name__ == "__main__":
  a = sys.argv[1:]
  if a[0] in MODES:  # MODE PROCESS_ID NUM_PROCESSES PORT DIRECTORY [INTEGERS]
    MODES[a[0]](int(a[1]), int(a[2]), a[3], a[4], *(int(v) for v in a[5:]))
  else:
    main(int(a[0]), int(a[1]), a[2], a[3], a[4], *(int(v) for v in a[5:]))
