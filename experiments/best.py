"""Chooses configs/best.py on validation alone, then reports it on the test split.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/best.py --workdir_root=runs/best

1. Selection, seed 7, test split never evaluated: configs/best.py and every variant in TRIALS
   (the configs tried on the way to it, and configs/best.py less one of its ingredients) train
   with a validation split of 2,500 of the training reviews, and each is judged by its best
   epoch's validation accuracy. configs/best.py must be the best of them (the script stops if
   it is not). One seed's validation accuracy on 2,500 reviews is uncertain by about 0.6
   points, so differences that small are noted as such.
2. Report: configs/best.py with 3 seeds; each evaluates the test split once, on its best
   validation epoch.
3. With --movies (written by experiments/imdb_movies.py), configs/best.py once more, seed 7,
   with a validation split of held-out movies, to compare its validation accuracy with test's.

Each run is `python -m seqjax.main` in a fresh process; finished runs are read, not trained
again. Writes experiments/results/best.md (the selection table, which doubles as the
ablation, and the final table) and a record per run under experiments/results/runs/best/.
"""

import json
import pathlib
import statistics

from absl import app, flags

from common import RESULTS, ROOT, launch, machine

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir_root", "runs/best", "Folder for the runs' workdirs.")
flags.DEFINE_list("seeds", ["7", "8", "9"], "Seeds of the final runs.")
flags.DEFINE_string("movies", "", "If given, the file experiments/imdb_movies.py writes: "
                    "configs/best.py is also run with a validation split of held-out movies.")

BEST = ROOT / "configs" / "best.py"
SELECTION = {"name": "selection", "seed": 7, "evaluate_test": "never"}
# (run name, how it differs from configs/best.py, config overrides over configs/best.py).
TRIALS = [
    ("first_try", "no Conv1D, no word dropout, output dropout 0.3, 6 epochs: the first "
     "config tried", {"conv_filters": 0, "word_dropout": 0.0, "output_dropout": 0.3,
                      "num_epochs": 6}),
    ("no_conv", "no Conv1D front end", {"conv_filters": 0}),
    ("no_conv_word_dropout_0.5", "no Conv1D front end, word dropout 0.5",
     {"conv_filters": 0, "word_dropout": 0.5}),
    ("no_conv_vocabulary_40k", "no Conv1D front end, 40,000 words, reviews up to 1,000 words",
     {"conv_filters": 0, "top_words": 40000, "max_length": 1000}),
]


def record_path(name: str) -> pathlib.Path:
  return RESULTS / "runs" / "best" / f"{name}.json"


def run(name: str, overrides: dict) -> dict:
  record = launch(BEST, pathlib.Path(FLAGS.workdir_root).resolve() / name, overrides)
  record_path(name).parent.mkdir(parents=True, exist_ok=True)
  record_path(name).write_text(json.dumps(record, indent=2) + "\n")
  return record


def select() -> list[str]:
  """Trains configs/best.py and TRIALS on validation; the selection table's rows."""
  chosen = run("chosen", SELECTION)
  score = chosen["best_epoch_validation_accuracy"]
  rows = [f"| chosen | configs/best.py | {100 * score:.2f} | — | {chosen['best_epoch']} |"]
  beaten_by = []
  for name, change, overrides in TRIALS:
    result = run(name, {**overrides, **SELECTION})
    accuracy = result["best_epoch_validation_accuracy"]
    rows.append(f"| {name} | {change} | {100 * accuracy:.2f} | {100 * (accuracy - score):+.2f} "
                f"| {result['best_epoch']} |")
    if accuracy > score:
      beaten_by.append(name)
  if beaten_by:
    raise SystemExit(f"On validation, {', '.join(beaten_by)} beat configs/best.py. Make "
                     "configs/best.py the better config (and TRIALS relative to it), then rerun.")
  return rows


def main(argv):
  del argv
  selection_rows = select()
  finals = [run(f"seed_{seed}", {"seed": int(seed)}) for seed in FLAGS.seeds]
  accuracies = [100 * r["test_accuracy"] for r in finals]
  spread = (f"{statistics.mean(accuracies):.2f} ± {statistics.stdev(accuracies):.2f}"
            if len(accuracies) > 1 else f"{accuracies[0]:.2f}")
  text = "\n".join([
      "# configs/best.py: chosen on validation, reported on test", "",
      f"Machine: {machine()}. Command: `python experiments/best.py`. Labelled reviews only: "
      "22,500 train, 2,500 validation (carved from the training split), 25,000 test.", "",
      "## Selection and ablation (seed 7; the test split was not evaluated)", "",
      "Each run is judged by its best epoch's validation accuracy. One seed on 2,500 reviews is "
      "uncertain by about ±0.6 points. The validation reviews are a random part of the "
      "training split, so most are of movies the training reviews also cover, while the test "
      "split's movies are all new (`experiments/imdb_movies.py`): validation accuracy reads "
      "higher than test accuracy.", "",
      "| run | config | best validation accuracy % | vs configs/best.py | best epoch |",
      "|---|---|---|---|---|",
      *selection_rows, "",
      "## configs/best.py on the test split (evaluated once per run, on its best validation "
      "epoch)", "",
      f"Parameters: {finals[0]['num_params']:,}. Test accuracy over seeds "
      f"{', '.join(FLAGS.seeds)}: **{spread} %**.", "",
      "| seed | best epoch (validation) | validation accuracy % | test accuracy % | test loss "
      "| train s (all epochs) |",
      "|---|---|---|---|---|---|",
      *(f"| {seed} | {r['best_epoch']} | {100 * r['best_epoch_validation_accuracy']:.2f} | "
        f"{100 * r['test_accuracy']:.2f} | {r['test_loss']:.4f} | {r['train_seconds']:.0f} |"
        for seed, r in zip(FLAGS.seeds, finals, strict=True)),
  ]) + "\n"
  if FLAGS.movies:
    r = run("by_movie_seed_7", {"seed": 7, "validation_groups": FLAGS.movies})
    per_epoch = " / ".join(f"{100 * e['validation_accuracy']:.2f}" for e in r["epochs"])
    text += "\n".join([
        "", "## The same with a validation split of held-out movies (seed 7)", "",
        f"`--config.validation_groups` = the movie of each training review: "
        f"{r['num_validation_examples']:,} validation reviews, none of a movie the "
        f"{r['num_train_examples']:,} training reviews cover.", "",
        "| best epoch (validation) | validation accuracy % per epoch | test accuracy % |",
        "|---|---|---|",
        f"| {r['best_epoch']} | {per_epoch} | {100 * r['test_accuracy']:.2f} |",
    ]) + "\n"
  (RESULTS / "best.md").write_text(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
