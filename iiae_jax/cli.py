"""What train.py and eval.py share: flag parsing, and errors a user acts on as one line.

    if __name__ == "__main__":
      cli.run(main)        # absl's app.run; an IIAEError is printed as "train.py: error: ..."
"""
import os
import sys
from typing import Callable, List

from absl import app

from iiae_jax.config import RENAMED
from iiae_jax.errors import IIAEError


def parse_command_line(argv: List[str]):
  """absl's flag parsing, with an unknown `--config.<field>` reported in one line (naming the
  new field when it is one the package renamed) instead of ml_collections' traceback."""
  try:
    return app.parse_flags_with_usage(argv)  # absl's own: a bad flag value is one line too
  except (AttributeError, KeyError) as e:
    key = str(e).strip("'\"")
    named = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
             and key in a.split("=")[0].split(".")[1:]]
    where = named[0] if named else "a --config.* override"
    field = where[len("--config."):]
    if field in RENAMED:
      message = f"{field} was renamed {RENAMED[field]}: use --config.{RENAMED[field]}"
    else:
      message = (f"the config has no field {key!r} (unknown fields are refused; see the config "
                 "file and iiae_jax/config.py for the fields)")
    _exit_with(argv[0], f"{where}: {message}")


def _exit_with(program: str, message: str) -> None:
  print(f"{os.path.basename(program)}: error: {message}", file=sys.stderr)
  sys.exit(1)


def run(main: Callable[[List[str]], None]) -> None:
  """Runs `main` under absl; what the user can act on is one line without a traceback."""
  def guarded(argv):
    try:
      main(argv)
    except IIAEError as e:  # other errors keep their traceback: they are bugs
      _exit_with(argv[0], str(e))
  app.run(guarded, flags_parser=parse_command_line)
