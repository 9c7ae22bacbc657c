"""Checks that `python -m seqjax.predict` on raw test reviews reproduces training's accuracy.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/check_predict.py --workdir=runs/bilstm

Writes the run's test split to a text file (one review per line), predicts it through the
command line, and compares the accuracy with the final evaluation in the run's results.json.
Prints both accuracies and the prediction throughput.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags

from seqjax import input_pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a finished training run.", required=True)


def main(argv):
  del argv
  workdir = pathlib.Path(FLAGS.workdir).resolve()
  config = json.loads((workdir / "config.json").read_text())
  results = json.loads((workdir / "results.json").read_text())
  test = tfds.data_source(config["dataset"], download=False,
                          data_dir=input_pipeline.resolve_data_dir(config["data_dir"]))[
                              config["eval_split"]]
  n = len(test) if not config["max_eval_examples"] else config["max_eval_examples"]
  records = test.__getitems__(list(range(n)))
  labels = np.array([r["label"] for r in records])
  with tempfile.TemporaryDirectory() as tmp:
    reviews, predictions = os.path.join(tmp, "reviews.txt"), os.path.join(tmp, "out.jsonl")
    with open(reviews, "wb") as f:
      for r in records:  # A review's own line breaks would split it; they separate words only.
        f.write(b" ".join(r["text"].splitlines()) + b"\n")
    start = time.time()
    subprocess.run([sys.executable, "-m", "seqjax.predict", f"--workdir={workdir}",
                    f"--input={reviews}", f"--output={predictions}"], check=True)
    seconds = time.time() - start
    with open(predictions) as f:
      probabilities = np.array([json.loads(line)["probability"] for line in f])
  accuracy = float(np.mean((probabilities > 0.5) == (labels == 1)))
  print(f"{len(labels)} reviews: predict accuracy {100 * accuracy:.2f}%, training's final "
        f"evaluation {100 * results['test_accuracy']:.2f}% (difference "
        f"{100 * abs(accuracy - results['test_accuracy']):.3f} points); "
        f"{seconds:.1f} s for the whole command, {len(labels) / seconds:.0f} reviews/s.")


if __name__ == "__main__":
  app.run(main)
