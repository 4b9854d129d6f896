"""Trains an IIAE: python train.py --config=configs/digits_cdcb.py --workdir=runs/digits_cdcb

Resumes from the newest checkpoint in --workdir. Any config field can be
overridden on the command line, e.g. --config.optimizer.learning_rate=1e-4.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from iiae_jax import observability, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose checkpoints were made with another config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  observability.quiet_library_logs()
  from iiae_jax import checkpointing, config_validation, evaluation
  from iiae_jax.data import DatasetFormatError, DatasetNotFoundError
  config = _CONFIG.value
  try:
    trainer.train_and_evaluate(config, _WORKDIR.value,
                               evaluate=evaluation.training_evaluator(config, _WORKDIR.value),
                               allow_config_change=_ALLOW_CONFIG_CHANGE.value, argv=sys.argv)
  except (checkpointing.CheckpointError, config_validation.ConfigError, DatasetNotFoundError,
          DatasetFormatError, trainer.NumericalFault, trainer.WorkdirBusyError) as e:
    # What the user can act on, without a traceback (other errors keep theirs).
    print(f"train.py: error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  from iiae_jax.config_validation import parse_command_line
  app.run(main, flags_parser=parse_command_line)
