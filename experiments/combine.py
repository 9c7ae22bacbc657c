"""Two trained classifiers combined after training: a weighted mean of their log-odds, the
weight chosen on the validation split.

  python experiments/combine.py --first=<workdir> --second=<workdir> [--evaluate_test]

Both runs must hold out the same validation reviews (the same dataset and `validation_groups`
or `validation_size`); each reads its own encoding of them (its own vocabulary) from its
cache. The first run's weight w, of 0, 0.05, ..., 1, is the one of least validation log-loss
(with a scale of the mean fitted beside it); with --evaluate_test the test split is then
scored once, with that w. Mesnil et al. (2015) combined their naive-Bayes SVM and recurrent
models in this way.
"""

import json
import os

import numpy as np
from absl import app, flags

from seqjax import input_pipeline, predict
from seqjax import workdir as workdir_lib

WEIGHTS = np.linspace(0.0, 1.0, 21)
SCALES = np.linspace(0.1, 3.0, 30)


def log_odds(probabilities: np.ndarray) -> np.ndarray:
  p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
  return np.log(p) - np.log1p(-p)


def _log_loss(z: np.ndarray, labels: np.ndarray) -> float:
  """Mean binary cross-entropy of log-odds z."""
  return float(np.mean(np.logaddexp(0.0, -z) + (1 - labels) * z))


def _accuracy(z: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean((z > 0) == (labels == 1)))


def choose_weight(first: np.ndarray, second: np.ndarray, labels: np.ndarray
                  ) -> tuple[float, float]:
  """(w, s) in WEIGHTS x SCALES of least log-loss of s * (w * first + (1 - w) * second), for
  log-odds `first` and `second`. Only w decides a prediction; s, fitted with it, keeps the
  choice of w from favouring whichever run is the more confident."""
  return min(((float(w), float(s)) for w in WEIGHTS for s in SCALES),
             key=lambda ws: _log_loss(ws[1] * (ws[0] * first + (1 - ws[0]) * second), labels))


def combine(first: str, second: str, evaluate_test: bool) -> dict:
  """The weight of `first`'s log-odds, chosen on validation, and the combination's validation
  accuracy and loss (and test accuracy and loss with `evaluate_test`); also each run's own."""
  runs = [predict.load(workdir) for workdir in (first, second)]
  # Encoded as in training: with the pretrained model's vocabulary where the run started
  # from one (train.train_and_evaluate), so from the same cache.
  data = [input_pipeline.load_data(run.config, run.vocabulary if run.config.init_from else None)
          for run in runs]
  names = ["validation", "test"] if evaluate_test else ["validation"]
  z, labels = {}, {}
  for name in names:
    splits = [getattr(d, name) for d in data]
    if any(split is None for split in splits):
      raise ValueError(f"Both runs need a {name} split to be combined on it.")
    if len(splits[0]) != len(splits[1]) or (splits[0].labels != splits[1].labels).any():
      raise ValueError(f"{first} and {second} hold out different {name} reviews: train both "
                       "with the same dataset and validation_groups (or validation_size).")
    z[name] = [log_odds(run.predict_encoded(split.inputs)) for run, split in zip(runs, splits)]
    labels[name] = splits[0].labels
  weight, scale = choose_weight(*z["validation"], labels["validation"])
  mix = lambda name: scale * (weight * z[name][0] + (1 - weight) * z[name][1])  # noqa: E731
  result = {"first": first, "second": second, "weight": weight, "scale": scale}
  for run, log_odds_ in zip(runs, z["validation"], strict=True):
    with open(os.path.join(run.workdir, workdir_lib.RESULTS)) as f:
      reported = json.load(f)["best_epoch_validation_accuracy"]
    if abs(_accuracy(log_odds_, labels["validation"]) - reported) > 1e-4:
      raise ValueError(f"{run.workdir}'s predictions do not reproduce its validation accuracy "
                       f"({reported:.4f}): its data were not encoded as in its training.")
  for name in names:
    result[f"{name}_accuracy"] = _accuracy(mix(name), labels[name])
    result[f"{name}_loss"] = _log_loss(mix(name), labels[name])
    result[f"first_{name}_accuracy"] = _accuracy(z[name][0], labels[name])
    result[f"second_{name}_accuracy"] = _accuracy(z[name][1], labels[name])
  return result


def main(argv):
  del argv
  print(json.dumps(combine(flags.FLAGS.first, flags.FLAGS.second, flags.FLAGS.evaluate_test),
                   indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("first", None, "Workdir of a finished classifier run.")
  flags.DEFINE_string("second", None, "Workdir of another, with the same validation split.")
  flags.DEFINE_bool("evaluate_test", False, "Also score the test split, once.")
  flags.mark_flags_as_required(["first", "second"])
  app.run(main)
