"""Trains the tutorial's models on IMDB over several seeds; tabulates and plots the results.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/tutorial.py --optimizer=adam \
      --seeds=7,8,9
  TFDS_DATA_DIR=../shared/data/tfds python experiments/tutorial.py --optimizer=adam \
      --study=tutorial_bucketed --models=lstm_bucketed,lstm_dropout_bucketed,\
lstm_recurrent_dropout_bucketed,bilstm_bucketed,cnn_lstm_bucketed --seeds=7,8,9
  TFDS_DATA_DIR=../shared/data/tfds python experiments/tutorial.py --study=tutorial_keras_adam \
      --models=bilstm,lstm_recurrent_dropout --seeds=7,8,9

The `tutorial` and `tutorial_bucketed` studies were trained with optax's Adam (--optimizer=adam),
before the tutorial configs took Keras' Adam (`config_lib.tutorial_config`).

Each run is `python -m seqjax.main` in a fresh process with config.optimizer=<optimizer>, in
<workdir_root>/<folder>/seed_<seed>, where <folder> is the model, with _<optimizer> appended
unless the optimizer is optax's 'adam', and _<tag> with --tag. A finished run is not trained
again (an interrupted one resumes). Each run's results.json is copied to
experiments/results/runs/<folder>/seed_<seed>.json, with the commit that trained it, and
everything else is built from those copies: experiments/results/<study>.md (per-seed rows
and a mean ± std summary beside Keras 3 on the same data and the tutorial's own figures) and
experiments/results/plots/<study>_<model>.png (learning curves, seeds overlaid).
`--skip_training` rebuilds the table and plots from the copies alone.
"""

import json
import pathlib
import re
import statistics

from absl import app, flags

from common import KERAS_REFERENCE, RESULTS, ROOT, launch, machine, mean_std, per_epoch
from seqjax import config as config_lib

TUTORIAL_MODELS = ["lstm", "lstm_dropout", "lstm_recurrent_dropout", "bilstm", "cnn_lstm"]
# The tutorial's printed accuracies. Its code evaluated the first model again after training
# models 2-4, so it gives no figure of their own.
TUTORIAL_FIGURES = {"lstm": 87.37, "cnn_lstm": 86.20}

OPTIMIZER_NAMES = {"adam": "optax's Adam (epsilon added to the bias-corrected sqrt(v))",
                   "keras_adam": "Keras' Adam (epsilon added to sqrt(v))"}

FLAGS = flags.FLAGS
flags.DEFINE_string("study", "tutorial", "Name of the table and plots under experiments/results.")
flags.DEFINE_list("models", TUTORIAL_MODELS, "Configs (names in configs/) to run.")
flags.DEFINE_list("seeds", ["7", "8", "9"], "Seeds to run each model with.")
flags.DEFINE_enum("optimizer", "keras_adam", config_lib.OPTIMIZERS,
                  "config.optimizer of every run; the `tutorial` and `tutorial_bucketed` "
                  "studies used 'adam' (optax's).")
flags.DEFINE_string("workdir_root", "runs/tutorial", "Folder for the runs' workdirs.")
flags.DEFINE_bool("skip_training", False, "Only rebuild the table and plots from the copies.")
flags.DEFINE_string("tag", "", "Appended to the runs' folder names, to keep a repetition apart "
                    "(e.g. 'native': the same runs on the native LSTM kernel).")


def run_folder(model: str) -> str:
  """Where `model`'s runs with FLAGS.optimizer go: optax's Adam's under the model's name,
  then _<tag> if one is given."""
  folder = model if FLAGS.optimizer == "adam" else f"{model}_{FLAGS.optimizer}"
  return f"{folder}_{FLAGS.tag}" if FLAGS.tag else folder


def run_record(model: str, seed: int) -> pathlib.Path:
  return RESULTS / "runs" / run_folder(model) / f"seed_{seed}.json"


def train(model: str, seed: int, workdir: pathlib.Path) -> None:
  """Trains (or resumes) one run and copies its record into experiments/results/runs."""
  record = launch(ROOT / "configs" / f"{model}.py", workdir,
                  {"seed": seed, "optimizer": FLAGS.optimizer})
  run_record(model, seed).parent.mkdir(parents=True, exist_ok=True)
  run_record(model, seed).write_text(json.dumps(record, indent=2) + "\n")


def keras_reference() -> dict[str, float]:
  """Final test accuracy (%) per model from ../shared/reference/keras_tutorial.md, if there."""
  if not KERAS_REFERENCE.exists():
    return {}
  found = {}
  for line in KERAS_REFERENCE.read_text().splitlines():
    match = re.match(r"\|\s*(\w+)\s*\|[^|]*\|[^|]*\|\s*([\d.]+)%", line)
    if match:
      found[match.group(1)] = float(match.group(2))
  return found


def summary_rows(records: dict[str, dict[int, dict]]) -> list[str]:
  keras = keras_reference()
  rows = []
  for model, by_seed in records.items():
    runs = list(by_seed.values())
    final = [100 * r["test_accuracy"] for r in runs]
    spread = f"{min(final):.2f}–{max(final):.2f}"
    loss = mean_std([r["test_loss"] for r in runs], digits=4)
    train_s = statistics.mean(e["train_seconds"] for r in runs for e in r["epochs"])
    eval_s = statistics.mean(e["eval_seconds"] for r in runs for e in r["epochs"])
    base = model.removesuffix("_bucketed")
    rows.append(
        f"| {model} | {runs[0]['num_params']:,} | {len(runs)} | **{mean_std(final)}** | {spread} "
        f"| {loss} | {train_s:.0f} | {eval_s:.0f} | {keras.get(base, float('nan')):.2f} "
        f"| {TUTORIAL_FIGURES.get(base, float('nan')):.2f} |".replace("nan", "—"))
  return rows


def load_records(models: list[str], seeds: list[str]) -> dict[str, dict[int, dict]]:
  """The run records of `models` x `seeds` found in experiments/results/runs."""
  records = {}
  for model in models:
    for seed in map(int, seeds):
      if run_record(model, seed).exists():
        records.setdefault(model, {})[seed] = json.loads(run_record(model, seed).read_text())
  return records


def bucketing_rows(records: dict[str, dict[int, dict]], seeds: list[str]) -> list[str]:
  """Each *_bucketed model beside its tutorial-faithful twin over the same seeds."""
  rows = []
  for model, by_seed in records.items():
    base = model.removesuffix("_bucketed")
    faithful = load_records([base], seeds).get(base, {})
    if model == base or not faithful:
      continue
    pair = {}
    for name, runs in (("bucketed", by_seed.values()), ("faithful", faithful.values())):
      # The fastest epoch: the least disturbed by whatever else the machine ran.
      pair[name] = ([100 * r["test_accuracy"] for r in runs],
                    min(e["train_seconds"] for r in runs for e in r["epochs"]))
    difference = statistics.mean(pair["bucketed"][0]) - statistics.mean(pair["faithful"][0])
    rows.append(f"| {base} | {mean_std(pair['faithful'][0])} ({len(pair['faithful'][0])}) "
                f"| {mean_std(pair['bucketed'][0])} ({len(pair['bucketed'][0])}) "
                f"| {difference:+.2f} | {pair['faithful'][1]:.0f} | {pair['bucketed'][1]:.0f} "
                f"| {pair['faithful'][1] / pair['bucketed'][1]:.1f}x |")
  if not rows:
    return []
  return ["", "Masking and bucketing against the tutorial-faithful model (pre-padding to 500, "
          "no mask), same seeds where both exist (their number in brackets):", "",
          "| model | faithful: test accuracy % | bucketed: test accuracy % | difference "
          "| faithful: fastest train epoch, s | bucketed: fastest train epoch, s | speed-up |",
          "|---|---|---|---|---|---|---|", *rows]


def seed_rows(records: dict[str, dict[int, dict]]) -> list[str]:
  rows = []
  for model, by_seed in records.items():
    for seed, r in by_seed.items():
      epochs = r["epochs"]
      rows.append(
          f"| {model} | {seed} | {per_epoch(epochs, 'test_accuracy', 100, 1)} "
          f"| {100 * r['test_accuracy']:.2f} | {r['test_loss']:.4f} "
          f"| {per_epoch(epochs, 'train_seconds')} | {per_epoch(epochs, 'eval_seconds')} "
          f"| {r['seqjax_commit']} |")
  return rows


def write_table(records: dict[str, dict[int, dict]], models: list[str], seeds: list[str]) -> str:
  machines = sorted({r.get("machine", machine()) for s in records.values() for r in s.values()})
  text = "\n".join([
      f"# {FLAGS.study}: {', '.join(models)}; seeds {', '.join(seeds)}",
      "",
      f"Machine: {'; '.join(machines)}. Built by `python experiments/tutorial.py "
      f"--optimizer={FLAGS.optimizer} --study={FLAGS.study} --models={','.join(models)} "
      f"--seeds={','.join(seeds)}` from the run records in runs/, trained with "
      f"{OPTIMIZER_NAMES[FLAGS.optimizer]}. Test accuracy is the trained model's after its last "
      "epoch; nothing was chosen on the test split. Times are wall-clock seconds per epoch and "
      "depend on what else the machine was running at the time (see tutorial_notes.md).",
      "",
      "| model | params | seeds | test accuracy % (mean ± std) | min–max | test loss "
      "| train s/epoch | eval s/epoch (25k) | Keras 3, same data, seed 7 | tutorial's figure |",
      "|---|---|---|---|---|---|---|---|---|---|",
      *summary_rows(records),
      *bucketing_rows(records, seeds),
      "",
      "| model | seed | test accuracy % after each epoch | final % | final loss "
      "| train s per epoch | eval s per epoch | trained by commit |",
      "|---|---|---|---|---|---|---|---|",
      *seed_rows(records),
  ]) + "\n"
  (RESULTS / f"{FLAGS.study}.md").write_text(text)
  return text


def plot(model: str, by_seed: dict[int, dict]) -> pathlib.Path:
  """Train and test accuracy and loss per epoch, one colour per seed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(1, 2, figsize=(10, 4))
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for (seed, r), colour in zip(by_seed.items(), colours, strict=False):
    epochs = [e["epoch"] for e in r["epochs"]]
    for axis, metric in zip(axes, ("accuracy", "loss"), strict=True):
      axis.plot(epochs, [e[f"train_{metric}"] for e in r["epochs"]], "--o", color=colour,
                label=f"seed {seed} train (epoch mean)")
      axis.plot(epochs, [e[f"test_{metric}"] for e in r["epochs"]], "-o", color=colour,
                label=f"seed {seed} test")
  for axis, metric in zip(axes, ("accuracy", "loss"), strict=True):
    axis.set_xlabel("epoch")
    axis.set_ylabel(metric)
    axis.set_xticks(epochs)
    axis.grid(alpha=0.3)
  axes[0].legend(fontsize="small")
  figure.suptitle(f"{model}: IMDB, {len(by_seed)} seeds")
  figure.tight_layout()
  path = RESULTS / "plots" / f"{FLAGS.study}_{model}.png"
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def main(argv):
  del argv
  if not FLAGS.skip_training:
    for model in FLAGS.models:
      for seed in map(int, FLAGS.seeds):
        train(model, seed,
              pathlib.Path(FLAGS.workdir_root).resolve() / run_folder(model) / f"seed_{seed}")
  records = load_records(FLAGS.models, FLAGS.seeds)
  print(write_table(records, FLAGS.models, FLAGS.seeds))
  for model, by_seed in records.items():
    print("wrote", plot(model, by_seed))


if __name__ == "__main__":
  app.run(main)
