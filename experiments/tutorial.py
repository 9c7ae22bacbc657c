"""Trains the tutorial's models on IMDB and tabulates each epoch's test accuracy and time.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/tutorial.py \
      --models=lstm,lstm_dropout --seeds=7 --workdir_root=runs/tutorial

Each run is `python -m seqjax.main` in a fresh process, in <workdir_root>/<model>/seed_<seed>; a
finished run is not trained again (rerunning resumes), so the table can be rebuilt at any time.
The markdown table goes to experiments/results/tutorial.md (or --output).
"""

import json
import os
import pathlib
import platform
import subprocess
import sys

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
TUTORIAL_MODELS = ["lstm", "lstm_dropout", "lstm_recurrent_dropout", "bilstm", "cnn_lstm"]

FLAGS = flags.FLAGS
flags.DEFINE_list("models", TUTORIAL_MODELS, "Configs (names in configs/) to run.")
flags.DEFINE_list("seeds", ["7"], "Seeds to run each model with.")
flags.DEFINE_string("workdir_root", "runs/tutorial", "Folder for the runs' workdirs.")
flags.DEFINE_string("output", str(ROOT / "experiments" / "results" / "tutorial.md"),
                    "Where to write the markdown table.")


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def run(model: str, seed: int, workdir: pathlib.Path) -> dict:
  subprocess.run([sys.executable, "-m", "seqjax.main", f"--config={ROOT / 'configs'}/{model}.py",
                  f"--workdir={workdir}", f"--config.seed={seed}"], cwd=ROOT, check=True)
  return json.loads((workdir / "results.json").read_text())


def table_row(model: str, seed: int, results: dict) -> str:
  epochs = results["epochs"]
  accuracies = " / ".join(f"{100 * e['test_accuracy']:.1f}" for e in epochs)
  train_times = " / ".join(f"{e['train_seconds']:.0f}" for e in epochs)
  eval_times = " / ".join(f"{e['eval_seconds']:.0f}" for e in epochs)
  return (f"| {model} | {results['num_params']:,} | {seed} | {accuracies} | "
          f"{100 * results['test_accuracy']:.2f}% (loss {results['test_loss']:.4f}) | "
          f"{train_times} | {eval_times} |")


def main(argv):
  del argv
  rows = []
  for model in FLAGS.models:
    for seed in map(int, FLAGS.seeds):
      workdir = pathlib.Path(FLAGS.workdir_root).resolve() / model / f"seed_{seed}"
      rows.append(table_row(model, seed, run(model, seed, workdir)))
  lines = [
      f"Machine: {cpu_name()}, {os.cpu_count()} cores, no accelerator. Command: "
      f"`python experiments/tutorial.py --models={','.join(FLAGS.models)} "
      f"--seeds={','.join(FLAGS.seeds)}`.",
      "",
      "| model | params | seed | test accuracy % after each epoch | final evaluation "
      "| train s per epoch | eval s per epoch (test split) |",
      "|---|---|---|---|---|---|---|",
      *rows,
  ]
  os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
  pathlib.Path(FLAGS.output).write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
