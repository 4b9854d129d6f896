"""SIGTERM as a request to checkpoint and stop, at the same step on every process, in bounded time."""
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Callable, Optional

import jax
from jax.experimental import multihost_utils


class StopRequested(Exception):
  """Raised at a batch boundary of an evaluation when SIGTERM asked the run to stop."""


class _Block:
  """An evaluation under a deadline: what saves its state, and whether it has ended."""

  def __init__(self, on_overdue: Callable[[], None]):
    self.on_overdue = on_overdue
    self.done = threading.Event()


class Preemption:
  """A context in which SIGTERM asks the loop to checkpoint and stop.

  One process: a Python handler sets a flag, read after each compiled call and
  at each batch of an evaluation (`check`). A watcher thread wakes at the
  signal itself (`signal.set_wakeup_fd`), even while the main thread is busy
  in compiled code: when an evaluation (`deadline`) has not stopped
  `grace_seconds` after the signal, it saves the state that evaluation was
  given and ends the process.
  Several processes: JAX's preemption service (it catches SIGTERM itself and
  tells every process) names one call at which all of them stop, so they save
  the same step and none waits in a collective for a peer that has left.
  """

  def __init__(self, grace_seconds: float = 20.0):
    self.grace_seconds = grace_seconds
    self.requested = False
    self._previous = None
    self._synced = False
    self._calls = 0
    self._lock = threading.Lock()
    self._block: Optional[_Block] = None
    self._pipe = None
    self._previous_fd = None

  def __enter__(self):
    self._synced = jax.process_count() > 1
    if self._synced:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
      return self
    read, write = os.pipe()
    os.set_blocking(write, False)
    self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    self._pipe = (read, write)
    threading.Thread(target=self._watch, args=(read,), name="iiae-preemption", daemon=True).start()
    return self

  def _handle(self, signum, frame):
    if not self.requested:
      logging.warning("SIGTERM: saving a checkpoint and stopping")
    self.requested = True

  def _watch(self, read: int) -> None:
    while True:
      try:
        data = os.read(read, 64)
      except OSError:
        return
      if not data:
        return
      if signal.SIGTERM in data:
        threading.Thread(target=self._enforce_deadline, daemon=True).start()

  def _enforce_deadline(self) -> None:
    with self._lock:
      block = self._block
    if block is None or block.done.wait(self.grace_seconds):
      return  # no evaluation running, or it stopped in time
    with self._lock:
      if self._block is not block:
        return
      logging.error("SIGTERM: the evaluation did not stop within %.0f s; saving the state it was "
                    "given and exiting (rerun the same command: it evaluates again)", self.grace_seconds)
      try:
        block.on_overdue()
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

  @contextlib.contextmanager
  def deadline(self, on_overdue: Callable[[], None]):
    """Within the block (an evaluation), a SIGTERM that the block does not answer within
    `grace_seconds` runs `on_overdue()` (which saves the state) and ends the process."""
    block = _Block(on_overdue)
    with self._lock:
      self._block = block
    try:
      yield
    finally:
      with self._lock:
        self._block = None
      block.done.set()

  def stop_now(self) -> bool:
    """Called by every process at the same points (after each compiled call, at each batch of an
    evaluation): whether to checkpoint and stop now."""
    if self._synced and not self.requested:
      self.requested = multihost_utils.reached_preemption_sync_point(self._calls)
      self._calls += 1
      if self.requested:
        logging.warning("SIGTERM (preemption notice) reached every process: saving a checkpoint and stopping")
    return self.requested

  def check(self) -> None:
    """Raises StopRequested when the run is to stop (between two batches of an evaluation)."""
    if self.stop_now():
      raise StopRequested()

  def __exit__(self, *exc):
    if self._pipe is not None:
      signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
      for fd in self._pipe:
        os.close(fd)
      self._pipe = None
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
