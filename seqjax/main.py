"""Trains and evaluates one model: `python -m seqjax.main --config=configs/lstm.py --workdir=W`.

Any config value can be overridden, e.g. `--config.num_epochs=1 --config.seed=3`.
"""

import logging as python_logging
import os
import sys

# TensorFlow only writes TensorBoard files here; keep its start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from seqjax import train  # noqa: E402
from seqjax.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs, vocabulary and results.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/lstm.py.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _SeqjaxInfoOnly(python_logging.Filter):
  """Keeps the console readable: INFO lines from seqjax and clu, only warnings from others."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return (record.levelno >= python_logging.WARNING
            or any(part in record.pathname for part in ("/seqjax/", "/clu/")))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_SeqjaxInfoOnly())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main)
