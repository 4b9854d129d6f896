"""Two processes on 127.0.0.1 (2 CPU devices each) train like one process with 4 devices."""
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import ROOT, run, start, stop

pytestmark = pytest.mark.slow   # each test runs two or three processes
WORKER = os.path.join(ROOT, "tests", "multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _spawn(arguments):
  """Two worker processes on one coordinator port: WORKER *arguments(i, PORT) for i = 0, 1."""
  port = str(_free_port())
  workers = []
  try:
    for i in range(2):
      workers.append(start([sys.executable, WORKER, *arguments(str(i), port)], env=_env(), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  except BaseException:
    stop(*workers)
    raise
  return workers


def _start_workers(workdir, *args):
  """WORKER i 2 PORT WORKDIR OUT.npz *args."""
  return _spawn(lambda i, port: [i, "2", port, str(workdir), f"{workdir}.npz", *args])


def _outputs(workers, timeout):
  """Each worker's output once all have exited; past `timeout` seconds (a hang) every one is
  killed, with its children, and the test fails showing their output."""
  deadline = time.monotonic() + timeout
  outputs = []
  try:
    for w in workers:
      outputs.append(w.communicate(timeout=max(0.0, deadline - time.monotonic()))[0])
  except subprocess.TimeoutExpired:
    stop(*workers)
    outputs += [w.communicate()[0] for w in workers[len(outputs):]]
    raise AssertionError(f"still running after {timeout} s:\n" + "\n".join(out[-3000:] for out in outputs)) from None
  finally:
    stop(*workers)
  return outputs


def test_two_processes_match_one_process_with_four_devices(tmp_path):
  workers = _start_workers(tmp_path / "multi")
  try:
    reference = run([sys.executable, WORKER, "0", "1", "0", str(tmp_path / "single"), str(tmp_path / "single.npz")],
                    600, cwd=ROOT, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
  except BaseException:
    stop(*workers)
    raise
  outputs = _outputs(workers, 600)
  assert reference.returncode == 0, reference.stderr[-3000:]
  for w, out in zip(workers, outputs):
    assert w.returncode == 0, out[-3000:]
    assert "2 processes, 4 devices, step 4" in out
  assert "1 processes, 4 devices, step 4" in reference.stdout
  multi, single = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
  assert sorted(multi.files) == sorted(single.files)
  for name in single.files:
    np.testing.assert_allclose(multi[name], single[name], atol=1e-5, rtol=1e-5, err_msg=name)
  # Only process 0 writes logs (each logged step once); both took part in the checkpoint.
  logged = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in logged] == [2, 4]
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["2", "4"]


def test_an_evaluation_failing_on_one_process_stops_both_with_the_state_saved(tmp_path):
  """Process 1's evaluation raises at step 4: both processes checkpoint step 4 and exit with an
  error (none waits forever in a collective for the other). Before, at step 2, the processes'
  scores differ: process 0's decide, and both save the best checkpoint."""
  from iiae_jax import checkpointing
  workers = _start_workers(tmp_path / "run", "6", "30", "4")
  outputs = _outputs(workers, 300)
  assert all(w.returncode not in (0, None) for w in workers), outputs
  assert "RuntimeError: evaluation broke on process 1 at step 4" in outputs[1], outputs[1][-3000:]
  assert "the evaluation at step 4 failed on another process" in outputs[0], outputs[0][-3000:]
  assert checkpointing.Checkpoints(str(tmp_path / "run" / "checkpoints")).steps() == [2, 4]
  best = checkpointing.Checkpoints(str(tmp_path / "run" / "best"))
  assert best.steps() == [2] and best.read_meta(2)["score"] == 0.4


def test_a_start_up_failing_on_one_process_stops_both_at_once(tmp_path):
  """Process 1 cannot load its evaluation split: both stop before the first step, each saying
  why (before, process 0 waited in a collective until process 1's exit timed out, 300 s)."""
  workers = _start_workers(tmp_path / "run", "6", "30", "-1")
  outputs = _outputs(workers, 240)           # well before the 300 s
  assert all(w.returncode not in (0, None) for w in workers), outputs
  assert "FileNotFoundError: process 1 cannot read its evaluation split" in outputs[1], outputs[1][-3000:]
  assert "start-up (data, model, evaluation splits) failed on another process" in outputs[0], \
      outputs[0][-3000:]
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_busy_workdir_stops_both_processes(tmp_path):
  """Only process 0 takes the workdir's lock; when it cannot, the other process stops too
  (instead of waiting in a collective until the heartbeat timeout)."""
  from iiae_jax.workdir import WorkdirLock
  os.makedirs(tmp_path / "run")
  with WorkdirLock(str(tmp_path / "run")):
    workers = _start_workers(tmp_path / "run", "4", "300")
    outputs = _outputs(workers, 240)           # well before the 300 s heartbeat timeout
  assert all(w.returncode not in (0, None) for w in workers), outputs
  assert f"in use by a running training job (pid {os.getpid()})" in outputs[0], outputs[0][-3000:]
  assert "in use by a running training job (process 0 could not lock it)" in outputs[1], outputs[1][-3000:]
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_two_checkpoint_managers_save_side_by_side_on_two_processes(tmp_path):
  """The trainer's checkpoints/ and best/ managers finish their saves in background threads at
  the same time; their cross-process barriers must not share names (orbax refuses a barrier
  already under way, and the processes then hang until killed)."""
  from iiae_jax import checkpointing
  workers = _spawn(lambda i, port: ["--two-managers", i, "2", port, str(tmp_path), "6"])
  outputs = _outputs(workers, 300)
  for i, (w, out) in enumerate(zip(workers, outputs)):
    assert w.returncode == 0 and f"process {i}: saved 6 steps into both" in out, out[-3000:]
  assert checkpointing.Checkpoints(str(tmp_path / "checkpoints")).steps() == [5, 6]
  best = checkpointing.Checkpoints(str(tmp_path / "best"))
  assert best.steps() == [6] and best.read_meta(6)["score"] == 6


def test_a_checkpoint_damaged_for_one_process_is_skipped_by_both(tmp_path):
  """Process 1 reads the newest checkpoint as damaged, process 0 whole: both restore the one
  before it and set the newest aside (before, their restores' barriers paired with unrelated
  collectives: a CheckpointError on one process, a wait on the other)."""
  workers = _spawn(lambda i, port: ["--damaged-on-one", i, "2", port, str(tmp_path / "checkpoints")])
  outputs = _outputs(workers, 300)
  for i, (w, out) in enumerate(zip(workers, outputs)):
    assert w.returncode == 0 and f"process {i}: restored step 2 holding 2.0" in out, out[-3000:]
  assert "could not be restored: ChecksumError: process 1 reads step 3" in outputs[1]
  assert "checkpoint 3 in" in outputs[0] and "could not be restored on another process" in outputs[0]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2", "3.damaged"]


def test_a_process_that_does_not_see_the_checkpoints_stops_both(tmp_path):
  """Resuming, process 1 lists no checkpoint (its host sees other files): both stop with an
  error naming the folder, instead of one restoring while the other starts afresh (a hang)."""
  workers = _spawn(lambda i, port: ["--unseen-on-one", i, "2", port, str(tmp_path / "run")])
  outputs = _outputs(workers, 300)
  assert all(w.returncode not in (0, None) for w in workers), outputs
  for out in outputs:
    assert "step 2" in out, out[-3000:]                      # the first run finished on both
    assert f"CheckpointError: the processes list different checkpoints in {tmp_path / 'run'}" in out, \
        out[-3000:]


def test_a_process_that_stops_making_progress_stops_itself_and_its_peer(tmp_path):
  """Process 1's data read hangs at step 5 (alive, but still): its watchdog stops it with an error
  naming the step and what it waited for, within the limit scaled to the measured steps (not
  the 600 s configured for start-up); process 0, left in a collective, stops too."""
  from iiae_jax import watchdog
  workers = _spawn(lambda i, port: ["--hang-on-one", i, "2", port, str(tmp_path / "run"), "600"])
  outputs = _outputs(workers, 500)   # both have stopped by then: before the 600 s a start-up may take
  assert all(w.returncode not in (0, None) for w in workers), outputs
  assert "the read of step 5's data hangs" in outputs[1], outputs[1][-3000:]
  assert re.search(r"no progress for \d+ s \(limit (\d+) s, distributed.step_timeout_seconds\) at step 5, "
                   r"waiting for the training data of steps 5-5", outputs[1]), outputs[1][-3000:]
  limit = int(re.search(r"limit (\d+) s", outputs[1]).group(1))
  assert watchdog.MIN_STEP_LIMIT_SECONDS <= limit < 600


def test_a_peer_reaching_its_first_collectives_long_after_the_other_is_waited_for(tmp_path):
  """Process 1 reaches its first check, and in another run its first pmapped mean, 40 s after
  process 0: process 0 waits for it (before, Gloo gave a peer joining a device group's first
  collective 30 s: "Gloo context initialization failed: DEADLINE_EXCEEDED")."""
  runs = {}
  try:
    for what, pmap in (("check", "0"), ("pmapped mean", "1")):   # both pairs at once
      runs[what] = _spawn(lambda i, port: ["--late-on-one", i, "2", port, str(tmp_path), "40", pmap])
    outputs = {what: _outputs(workers, 300) for what, workers in runs.items()}
  finally:
    stop(*(w for workers in runs.values() for w in workers))
  for what, result in (("check", "True"), ("pmapped mean", "0.5")):
    for i, (w, out) in enumerate(zip(runs[what], outputs[what])):
      assert w.returncode == 0, out[-3000:]
      assert re.search(rf"^process {i}: waited \d+ s in its first {what}: {result}$", out, re.M), out[-3000:]
    waited = int(re.search(r"process 0: waited (\d+) s", outputs[what][0]).group(1))
    assert waited > 30, outputs[what][0][-3000:]             # past the deadline Gloo had
