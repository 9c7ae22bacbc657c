"""Trains and evaluates one model: `python -m seqjax.main --config=configs/lstm.py --workdir=W`.

Any config value can be overridden, e.g. `--config.num_epochs=1 --config.seed=3`.
"""

from seqjax import cli, malloc

if __name__ == "__main__":
  malloc.restart_with_huge_pages()  # Before the slow imports below.
  cli.quiet_tensorflow()  # Before the imports below import TensorFlow.

import difflib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from seqjax import config as config_lib  # noqa: E402
from seqjax import parallel  # noqa: E402
from seqjax import train  # noqa: E402
from seqjax import workdir as workdir_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs, vocabulary and results.")
flags.DEFINE_bool("overwrite", False, "Delete a previous run's files in --workdir and start over, "
                  "even if it was written by another config.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/lstm.py.",
                                lock_config=True)
# Several processes: Cloud TPU, SLURM and Open MPI are detected; elsewhere set all three.
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "How many processes take part.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 to num_processes - 1.")
flags.mark_flags_as_required(["config", "workdir"])


def _unknown_config_keys(argv: list[str]) -> list[str]:
  known = config_lib.base_config()
  overridden = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
  return [key for key in overridden if key.split(".")[0] not in known]


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, but a bad flag, config file or override is one line and exit code 2."""
  try:
    remaining = FLAGS(argv)
    FLAGS.config.keys()  # Loads the config file, which config_flags defers.
    return remaining
  except Exception as e:  # The config file is the user's code: anything may go wrong in it.
    unknown = _unknown_config_keys(argv)
    config_files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if config_files and not os.path.isfile(config_files[-1]):
      message = (f"--config={config_files[-1]}: no such file. The tutorial configs are in "
                 "configs/, e.g. --config=configs/lstm.py.")
    elif unknown:
      key = unknown[0]
      close = difflib.get_close_matches(key, config_lib.base_config().keys(), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      message = (f"--config.{key}: there is no config key {key!r}{hint}. The keys are listed "
                 "in seqjax/config.py.")
    else:
      message = f"{type(e).__name__}: {' '.join(str(e).split())}"
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.overwrite:
    if jax.process_index() == 0:
      cli.run(workdir_lib.clear, FLAGS.workdir)
    parallel.barrier("seqjax: overwrite")  # No process reads the workdir while it is cleared.
  cli.run(train.train_and_evaluate, FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
