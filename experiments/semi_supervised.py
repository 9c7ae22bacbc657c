"""Pretrains a language model on IMDB's unlabelled text, starts classifiers from it, chooses on
validation alone and reports the choice on the test split.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/semi_supervised.py \
      --movies=runs/imdb_train_movies.txt --stop_after=pretrain

1. Pretraining: configs/language_model.py in <workdir_root>/language_model, for --lm_epochs
   epochs. It reads the `train` and `unsupervised` splits' text, never `test`'s, and
   checkpoints every 200 steps: stop it at any time (Ctrl-C) and rerun to go on, so it can run
   in pieces across sessions. --lm_epochs may grow between pieces.
2. Selection (seed 7; the test split never evaluated): each trial in TRIALS, a variant of
   configs/pretrained_bilstm.py, judged by its best epoch's accuracy on the validation split
   of held-out movies (`--movies`, from experiments/imdb_movies.py), the one experiments/best.py
   chose the labelled-only configs on. Trials that start from the language model start from
   its best epoch (the lowest validation perplexity) at the time they are first trained.
   Then `pretrained_combined`: the `pretrained` run and configs/naive_bayes_bag.py's (run `bag`),
   trained apart, their log-odds averaged with the weight of least validation log-loss
   (experiments/combine.py).
3. Finals: the best trial on validation with the LSTM alone (no bag) that uses the language
   model, then the best one overall that uses it, each with --seeds (runs
   `<trial>_seed_<seed>`); each evaluates the test split once, on its best validation epoch.

Each run is `python -m seqjax.main` in a fresh process; finished runs are read, not trained
again. Writes experiments/results/semi_supervised.md (what is finished so far), the language
model's perplexity curve in experiments/results/plots/, and a record per run under
experiments/results/runs/semi_supervised/. Times are wall-clock on this machine's cores.
"""

import json
import pathlib
import statistics
import subprocess
import sys

from absl import app, flags

import combine
from common import RESULTS, ROOT, launch, machine
from seqjax import config as config_lib
from seqjax import input_pipeline, models

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir_root", "runs/semi_supervised", "Folder for the runs' workdirs.")
flags.DEFINE_string("movies", None, "The movie of each training review, as "
                    "experiments/imdb_movies.py writes it: validation holds out whole movies.")
flags.DEFINE_integer("lm_epochs", 10, "Epochs of pretraining.")
flags.DEFINE_list("seeds", ["7", "8", "9"], "Seeds of the final runs.")
flags.DEFINE_enum("stop_after", "final", ["pretrain", "select", "final"],
                  "The last stage to run; the table shows what is finished.")
flags.mark_flag_as_required("movies")

LANGUAGE_MODEL = ROOT / "configs" / "language_model.py"
CLASSIFIER = ROOT / "configs" / "pretrained_bilstm.py"
BAG_ALONE = ROOT / "configs" / "naive_bayes_bag.py"
BAG = dict(ngram_order=3, ngram_buckets=2**22, ngram_bag="naive_bayes")  # naive_bayes_bag.py's
SELECTION = {"seed": 7, "evaluate_test": "never"}
# (name, what it changes, uses the language model, overrides of configs/pretrained_bilstm.py).
TRIALS = [
    ("scratch", "no pretraining: the same classifier from a random start", False, {}),
    ("pretrained", "embedding and BiLSTM from the language model", True, {}),
    ("pretrained_lr_1e-3", "pretrained, Adam 1e-3 (not 2e-3)", True, {"learning_rate": 1e-3}),
    ("pretrained_bag", "pretrained, with configs/naive_bayes_bag.py's bag beside it", True, BAG),
]
# Not trained: `pretrained` and configs/naive_bayes_bag.py (run `bag`) combined after training.
COMBINED = ("pretrained_combined", "pretrained and configs/naive_bayes_bag.py trained apart, "
            "their log-odds averaged with a weight chosen on validation", True, None)


def workdir(name: str) -> pathlib.Path:
  return pathlib.Path(FLAGS.workdir_root).resolve() / name


def pretrain() -> list[dict]:
  """Trains (or resumes, or extends) the language model; its per-epoch records."""
  path = workdir("language_model")
  subprocess.run([sys.executable, "-m", "seqjax.main", f"--config={LANGUAGE_MODEL}",
                  f"--workdir={path}", f"--config.num_epochs={FLAGS.lm_epochs}"],
                 cwd=ROOT, check=True)
  results = json.loads((path / "results.json").read_text())
  save_record("language_model", results)
  return results["epochs"]


def save_record(name: str, record: dict) -> None:
  path = RESULTS / "runs" / "semi_supervised" / f"{name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=2) + "\n")


def run_name(name: str, uses_lm: bool) -> str:
  """A run that starts from the language model is named after its number of epochs too
  (`<name>_lm<epochs>`): more pretraining makes a new run."""
  return f"{name}_lm{FLAGS.lm_epochs}" if uses_lm else name


def run(name: str, uses_lm: bool, overrides: dict, config_file=CLASSIFIER) -> dict:
  """Trains (or reads) a classifier run."""
  overrides = {**overrides, "validation_groups": FLAGS.movies}
  if uses_lm:
    overrides["init_from"] = str(workdir("language_model"))
  name = run_name(name, uses_lm)
  record = launch(config_file, workdir(name), overrides)
  save_record(name, record)
  return record


def combined(lstm: tuple[str, dict], bag: tuple[str, dict], evaluate_test: bool) -> dict:
  """Two finished runs, (name, record) each, combined (experiments/combine.py); saved as a
  record like a run's, with their training time."""
  name = f"{lstm[0]}_and_{bag[0]}"
  record = {**combine.combine(str(workdir(lstm[0])), str(workdir(bag[0])), evaluate_test),
            "best_epoch": "—", "train_seconds": lstm[1]["train_seconds"] +
            bag[1]["train_seconds"]}
  record["best_epoch_validation_accuracy"] = record["validation_accuracy"]
  save_record(name, record)
  return record


def select(report: list[str]) -> list[tuple[str, str, bool, dict, dict]]:
  """Each trial's (name, change, uses_lm, overrides, result) on validation; the table so far
  is written after each, below `report`."""
  trials = []
  for name, change, uses_lm, overrides in TRIALS:
    trials.append((name, change, uses_lm, overrides,
                   run(name, uses_lm, {**overrides, **SELECTION})))
    write(report + selection_section(trials))
  pretrained = next(t for t in trials if t[0] == "pretrained")
  bag = run("bag", False, SELECTION, BAG_ALONE)
  trials.append((*COMBINED[:4], combined((run_name("pretrained", True), pretrained[4]),
                                         ("bag", bag), evaluate_test=False)))
  write(report + selection_section(trials))
  return trials


def write(lines: list[str]) -> None:
  text = "\n".join(lines)
  (RESULTS / "semi_supervised.md").write_text(text)
  print(text)


def finals(trial: tuple) -> tuple[list[dict], str]:
  """The trial's config with FLAGS.seeds (runs `<trial>_seed_<seed>`), each evaluating the
  test split once; for COMBINED, `pretrained`'s finals and the bag's, combined."""
  name, _, uses_lm, overrides, _ = trial
  if name == COMBINED[0]:
    runs = []
    for seed in FLAGS.seeds:
      lstm = run(f"pretrained_seed_{seed}", True, {"seed": int(seed)})
      bag = run(f"bag_seed_{seed}", False, {"seed": int(seed)}, BAG_ALONE)
      runs.append(combined((run_name(f"pretrained_seed_{seed}", True), lstm),
                           (f"bag_seed_{seed}", bag), evaluate_test=True))
  else:
    runs = [run(f"{name}_seed_{seed}", uses_lm, {**overrides, "seed": int(seed)})
            for seed in FLAGS.seeds]
  accuracies = [100 * r["test_accuracy"] for r in runs]
  spread = (f"{statistics.mean(accuracies):.2f} ± {statistics.stdev(accuracies):.2f}"
            if len(accuracies) > 1 else f"{accuracies[0]:.2f}")
  return runs, spread


def hours(seconds: float) -> str:
  return f"{seconds / 3600:.2f}"


def plot_perplexity(epochs: list[dict]) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  path = RESULTS / "plots" / "semi_supervised_language_model.png"
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot([e["epoch"] for e in epochs], [e["validation_perplexity"] for e in epochs], "o-")
  ax.set(xlabel="epoch", ylabel="held-out perplexity", title="configs/language_model.py")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return f"plots/{path.name}"


def pretraining_section(epochs: list[dict]) -> list[str]:
  lm = config_lib.from_file(LANGUAGE_MODEL)
  data = input_pipeline.load_data(lm)  # From the cache the run wrote.
  unigram = models.unigram_perplexity(data.train.inputs, data.validation.inputs, lm.top_words,
                                      lm.bidirectional)
  total = sum(e["train_seconds"] for e in epochs)
  return [
      "## Pretraining: configs/language_model.py", "",
      f"{lm.lstm_units}-unit LSTMs, {'both directions' if lm.bidirectional else 'forward'}, "
      f"over {lm.top_words:,} words; text of the train and unsupervised splits, "
      f"{lm.validation_size:,} reviews held out for the perplexity (full softmax; each word's "
      f"frequency in the training text alone gives {unigram:.0f}). {len(epochs)} epoch(s) so "
      f"far, {hours(total)} h of training.", "",
      f"![perplexity]({plot_perplexity(epochs)})", "",
      "| epoch | held-out perplexity | held-out next-word accuracy % | train loss (sampled "
      "softmax) | train s | eval s |",
      "|---|---|---|---|---|---|",
      *(f"| {e['epoch']} | {e['validation_perplexity']:.1f} | "
        f"{100 * e['validation_accuracy']:.2f} | {e['train_loss']:.4f} | "
        f"{e['train_seconds']:.0f} | {e['eval_seconds']:.0f} |" for e in epochs), ""]


def selection_section(trials: list) -> list[str]:
  return [
      "## Selection (seed 7; the test split was not evaluated)", "",
      "Each run is judged by its best epoch's accuracy on the validation reviews of held-out "
      "movies; one seed on 2,500 reviews is uncertain by about ±0.6 points. Training hours "
      "leave out the pretraining's.", "",
      "| run | change | uses unlabelled text | best validation accuracy % | best epoch | "
      "train h |",
      "|---|---|---|---|---|---|",
      *(f"| {name} | {change} | {'yes' if uses_lm else 'no'} | "
        f"{100 * r['best_epoch_validation_accuracy']:.2f} | {r['best_epoch']} | "
        f"{hours(r['train_seconds'])} |" for name, change, uses_lm, _, r in trials), ""]


def finals_section(title: str, trial: tuple, runs: list[dict], spread: str) -> list[str]:
  return [
      f"## {title}: {trial[0]} on the test split (evaluated once per run)", "",
      f"Test accuracy over seeds {', '.join(FLAGS.seeds)}: **{spread} %**.", "",
      "| seed | best epoch (validation) | validation accuracy % | test accuracy % | "
      "train h | combined: the LSTM's weight; each alone, test accuracy % |",
      "|---|---|---|---|---|---|",
      *(f"| {seed} | {r['best_epoch']} | {100 * r['best_epoch_validation_accuracy']:.2f} | "
        f"{100 * r['test_accuracy']:.2f} | {hours(r['train_seconds'])} | "
        + (f"{r['weight']:.2f}; LSTM {100 * r['first_test_accuracy']:.2f}, bag "
           f"{100 * r['second_test_accuracy']:.2f}" if "weight" in r else "—") + " |"
        for seed, r in zip(FLAGS.seeds, runs, strict=True)), ""]


def main(argv):
  del argv
  lines = ["# Pretraining on unlabelled reviews, then fine-tuning", "",
           f"Machine: {machine()}. Command: `python experiments/semi_supervised.py "
           f"--movies=... --lm_epochs={FLAGS.lm_epochs} --stop_after={FLAGS.stop_after}` "
           "(module docstring).", ""]
  lines += pretraining_section(pretrain())
  if FLAGS.stop_after != "pretrain":
    trials = select(lines)
    lines += selection_section(trials)
    if FLAGS.stop_after == "final":
      score = lambda t: t[4]["best_epoch_validation_accuracy"]  # noqa: E731
      best = max((t for t in trials if t[2]), key=score)
      alone = max((t for t in trials if t[2] and t[3] is not None and "ngram_order" not in t[3]),
                  key=score)
      # The LSTM alone first: the issue asks how it compares with the bag whatever wins.
      if alone is not best:
        lines += finals_section("The best with the LSTM alone", alone, *finals(alone))
      lines += finals_section("The best config using unlabelled text", best, *finals(best))
  write(lines)


if __name__ == "__main__":
  app.run(main)
