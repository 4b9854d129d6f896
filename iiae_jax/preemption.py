"""SIGTERM as a request to checkpoint and stop, at the same step on every process."""
import logging
import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
  """A context in which SIGTERM asks the loop to checkpoint and stop.

  One process: a Python handler sets a flag, read after each compiled call.
  Several processes: JAX's preemption service (it catches SIGTERM itself and
  tells every process) names one call at which all of them stop, so they save
  the same step and none waits in a collective for a peer that has left.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._synced = False
    self._calls = 0

  def __enter__(self):
    self._synced = jax.process_count() > 1
    if self._synced:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: saving a checkpoint and stopping")
    self.requested = True

  def stop_now(self) -> bool:
    """Called by every process after every compiled call: whether to checkpoint and stop now."""
    if self._synced and not self.requested:
      self.requested = multihost_utils.reached_preemption_sync_point(self._calls)
      self._calls += 1
      if self.requested:
        logging.warning("SIGTERM (preemption notice) reached every process: saving a checkpoint and stopping")
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
