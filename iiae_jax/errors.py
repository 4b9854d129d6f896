"""Every error a user acts on, under one base class.

`train.py` and `eval.py` print an `IIAEError` as one line (`train.py: error: ...`)
and exit 1; anything else keeps its traceback, because it is a bug of ours.
Each class also derives from the builtin error it refines, so code that
catches `ValueError` or `FileNotFoundError` keeps working.
"""


class IIAEError(Exception):
  """An error whose message says what to change (a field, a file, a folder)."""


class ConfigError(IIAEError, ValueError):
  """Config fields hold impossible values; the message names each field.

  `messages` holds one line per bad field (the message lists them all).
  """

  def __init__(self, message: str, messages=None):
    super().__init__(message)
    self.messages = list(messages) if messages is not None else [message]


class UsageError(IIAEError, ValueError):
  """A command-line request that cannot be served as asked (a bad --checkpoint or --out)."""


class CheckpointError(IIAEError, RuntimeError):
  """No usable checkpoint, or one that does not fit the current config."""


class ConfigMismatchError(CheckpointError):
  """A checkpoint whose arrays do not fit the model of the current config."""


class DatasetNotFoundError(IIAEError, FileNotFoundError):
  """A dataset's folder or one of its files is missing; the message says how to get it."""


class DatasetFormatError(IIAEError, ValueError):
  """A dataset file exists but its content is not what the loader expects."""


class NumericalFault(IIAEError, FloatingPointError):
  """A non-finite loss, gradient or input; the last good checkpoint is kept."""


class WorkdirBusyError(IIAEError, RuntimeError):
  """Another training job holds the workdir's lock."""
