"""Trains and evaluates one model: `python -m seqjax.main --config=configs/lstm.py --workdir=W`.

Any config value can be overridden, e.g. `--config.num_epochs=1 --config.seed=3`.
"""

from seqjax import cli  # First: it quiets TensorFlow before anything imports it.

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from seqjax import train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs, vocabulary and results.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/lstm.py.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  cli.run(train.train_and_evaluate, FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
