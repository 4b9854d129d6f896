"""Trains an IIAE: python train.py --config=configs/digits_cdcb.py --workdir=runs/digits_cdcb

Resumes from the newest checkpoint in --workdir. Any config field can be
overridden on the command line, e.g. --config.optimizer.learning_rate=1e-4.
"""
import sys

from absl import flags, logging
from ml_collections import config_flags

from iiae_jax import cli, evaluation, observability, run_config, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose checkpoints were made with another config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  observability.quiet_library_logs()
  run = run_config.parse(_CONFIG.value)  # every bad field at once, before anything loads
  trainer.train_and_evaluate(run, _WORKDIR.value,
                             evaluations=evaluation.EvaluationSuite.for_training(run, _WORKDIR.value),
                             allow_config_change=_ALLOW_CONFIG_CHANGE.value, argv=sys.argv)


if __name__ == "__main__":
  cli.run(main)
