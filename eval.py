"""Evaluates a trained IIAE: python eval.py --config=configs/digits_cdcb.py --workdir=runs/digits_cdcb

  --checkpoint=best|latest|STEP   which checkpoint (default latest; best falls back to latest)
  --out=DIR                       where to write (default <workdir>/eval_<kind>_<step>/)

Runs every evaluator of config.evals on its split (test by default) and writes
results.json, index.html and the image grids. Use the same --config (and
--config.* overrides) as for training.
"""
from absl import flags, logging
from ml_collections import config_flags

from iiae_jax import cli, evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "best, latest or a step number.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default <workdir>/eval_<kind>_<step>).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  evaluate.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value, _OUT.value,
                               config_name=config_flags.get_config_filename(flags.FLAGS["config"]))


if __name__ == "__main__":
  cli.run(main)
