"""Two processes on 127.0.0.1 (2 CPU devices each) train like one process with 4 devices."""
import os
import socket
import subprocess
import sys

import numpy as np

from tests.helpers import ROOT

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


def test_two_processes_match_one_process_with_four_devices(tmp_path):
  port = str(_free_port())
  workers = [subprocess.Popen([sys.executable, WORKER, str(i), "2", port, str(tmp_path / "multi"),
                               str(tmp_path / "multi.npz")], env=_env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
  reference = subprocess.run([sys.executable, WORKER, "0", "1", "0", str(tmp_path / "single"),
                              str(tmp_path / "single.npz")], cwd=ROOT, capture_output=True, text=True,
                             env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"), timeout=600)
  outputs = []
  for w in workers:
    try:
      outputs.append(w.communicate(timeout=600)[0])
    finally:
      w.kill()
  assert reference.returncode == 0, reference.stderr[-3000:]
  for w, out in zip(workers, outputs):
    assert w.returncode == 0, out[-3000:]
    assert "2 processes, 4 devices, step 4" in out
  assert "1 processes, 4 devices, step 4" in reference.stdout
  multi, single = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
  assert sorted(multi.files) == sorted(single.files)
  for name in single.files:
    np.testing.assert_allclose(multi[name], single[name], atol=1e-5, rtol=1e-5, err_msg=name)
  # Only process 0 writes logs; both took part in the checkpoint.
  assert (tmp_path / "multi" / "metrics.jsonl").exists()
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["2", "4"]
