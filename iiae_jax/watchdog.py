"""A process of a multi-process run that stops making progress stops itself, so its peers stop too.

A hung data read or a wedged device leaves a process alive but still; its
peers then wait in their next collective forever (JAX's heartbeat only
notices processes that have died). The loop marks each thing it waits for
(`watchdog.waiting_for(step, "the compiled call of steps 8-9")`); a process
whose last mark is older than its limit logs what it was waiting for and
exits, and the others' heartbeat then stops them with an error.
"""
import logging
import os
import sys
import threading
import time
from typing import Optional

# Once a few training steps are measured, one may take this many times the slowest seen so far,
# and at least MIN_STEP_LIMIT_SECONDS (a loaded host stalls a process for seconds).
STEP_TIME_FACTOR = 20.0
MIN_STEP_LIMIT_SECONDS = 30.0
STEPS_BEFORE_SCALING = 3


class StepWatchdog:
  """Ends the process when a mark is older than its limit (`enabled`: multi-process runs only).

  The limit is `timeout_seconds` for everything but the measured parts of a
  training step (reading its data, a compiled call whose program is compiled
  already): once STEPS_BEFORE_SCALING of those were measured they get
  min(timeout_seconds, max(MIN_STEP_LIMIT_SECONDS, STEP_TIME_FACTOR x the slowest)).
  """

  def __init__(self, timeout_seconds: float, enabled: bool, poll_seconds: float = 1.0):
    self.timeout_seconds = float(timeout_seconds)
    self.enabled = enabled
    self._poll = poll_seconds
    self._lock = threading.Lock()
    self._mark: Optional[tuple] = None      # (since, step, what, is a training call)
    self._measured, self._slowest = 0, 0.0
    self._stop = threading.Event()

  def __enter__(self):
    if self.enabled:
      threading.Thread(target=self._watch, name="iiae-step-watchdog", daemon=True).start()
    return self

  def __exit__(self, *exc):
    self._stop.set()

  def waiting_for(self, step: int, what: str, measured: bool = False) -> None:
    """From now on the process waits for `what` (at `step`); ends the previous wait. `measured`:
    a part of a training step whose time predicts the next ones (not a first compilation)."""
    now = time.monotonic()
    with self._lock:
      if self._mark is not None and self._mark[3]:
        self._measured += 1
        self._slowest = max(self._slowest, now - self._mark[0])
      self._mark = (now, int(step), what, measured)

  def limit(self, measured: bool) -> float:
    if measured and self._measured >= STEPS_BEFORE_SCALING:
      return min(self.timeout_seconds, max(MIN_STEP_LIMIT_SECONDS, STEP_TIME_FACTOR * self._slowest))
    return self.timeout_seconds

  def _watch(self) -> None:
    while not self._stop.wait(self._poll):
      with self._lock:
        if self._mark is None:
          continue
        since, step, what, measured = self._mark
        waited, limit = time.monotonic() - since, self.limit(measured)
      if waited > limit:
        message = (f"no progress for {waited:.0f} s (limit {limit:.0f} s, distributed.step_timeout_"
                   f"seconds) at step {step}, waiting for {what}; stopping this process so that the "
                   "others stop too (rerun the same command to resume from the last checkpoint)")
        logging.error(message)
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(1)
