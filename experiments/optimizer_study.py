"""The recurrent-dropout models over three seeds: seqjax with optax's Adam, seqjax with Keras'
Adam, and Keras 3 itself. Does the epoch-3 fall follow the optimizer, the framework, or neither?

  python experiments/optimizer_study.py

Reads the run records only (nothing is trained here): seqjax with optax's Adam from the
`tutorial` study (runs/<model>/, trained with optax's epsilon 1e-8, before `adam_epsilon`)
and with epsilon 1e-7 where rerun so (runs/<model>_adam_epsilon_1e-7/); seqjax with Keras'
Adam from the `tutorial_keras_adam` study (runs/<model>_keras_adam/, trained by
`experiments/tutorial.py --study=tutorial_keras_adam`); Keras 3 from runs/keras3/<model>/
(`experiments/keras_tutorial.py`) or, for the runs made before it,
../shared/reference/keras_tutorial.md. Writes experiments/results/keras_adam.md.
"""

import json
import re

from absl import app, flags

from common import KERAS_REFERENCE, RESULTS, mean_std

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["bilstm", "lstm_recurrent_dropout"], "Configs in configs/.")
flags.DEFINE_list("seeds", ["7", "8", "9"], "Seeds.")

# A fall: test accuracy down by at least this many points from the epoch before.
FALL_POINTS = 3.0
COLUMNS = {"optax": "seqjax, optax's Adam (epsilon 1e-8)",
           "optax_1e-7": "seqjax, optax's Adam, epsilon 1e-7",
           "keras_adam": "seqjax, Keras' Adam (epsilon 1e-7)", "keras3": "Keras 3"}


Curve = tuple[list[float], float, str]  # Test accuracy % per epoch, final %, its source.


def reference_curves() -> dict[str, dict[int, Curve]]:
  """The Keras 3 reference file's runs, by model and seed: its first table (seed 7, every
  model) and its BiLSTM table (seeds 7, 8, 9)."""
  found: dict[str, dict[int, Curve]] = {}
  if not KERAS_REFERENCE.exists():
    return found
  epochs = r"\s*([\d.]+)\s*/\s*([\d.]+)\s*/\s*([\d.]+)\s*\|\s*([\d.]+)%"
  source = "../shared/reference/keras_tutorial.md"
  for line in KERAS_REFERENCE.read_text().splitlines():
    if match := re.match(rf"\|\s*([a-z_]+)\s*\|[^|]*\|{epochs}", line):
      model, seed = match.group(1), 7
    elif match := re.match(rf"\|\s*(\d+)\s*\|{epochs}", line):
      model, seed = "bilstm", int(match.group(1))
    else:
      continue
    values = [float(match.group(i)) for i in (2, 3, 4, 5)]
    found.setdefault(model, {})[seed] = (values[:3], values[3], source)
  return found


def curves(model: str, seed: int) -> dict[str, Curve]:
  """Each column's run of `model` with `seed`, where there is one."""
  found = {}
  runs = RESULTS / "runs"
  for column, folder in (("optax", runs / model),
                         ("optax_1e-7", runs / f"{model}_adam_epsilon_1e-7"),
                         ("keras_adam", runs / f"{model}_keras_adam"),
                         ("keras3", runs / "keras3" / model)):
    path = folder / f"seed_{seed}.json"
    if path.exists():
      record = json.loads(path.read_text())
      found[column] = ([100 * e["test_accuracy"] for e in record["epochs"]],
                       100 * record["test_accuracy"], str(path.relative_to(RESULTS)))
  reference = reference_curves().get(model, {}).get(seed)
  if "keras3" not in found and reference:
    found["keras3"] = reference
  return found


def falls(accuracies: list[float]) -> list[int]:
  """The epochs whose test accuracy fell by FALL_POINTS or more."""
  return [i + 1 for i in range(1, len(accuracies))
          if accuracies[i - 1] - accuracies[i] >= FALL_POINTS]


def cell(curve: Curve | None) -> str:
  if curve is None:
    return "not run"
  accuracies = curve[0]
  fell = falls(accuracies)
  note = f" (falls in epoch {', '.join(map(str, fell))})" if fell else ""
  return " / ".join(f"{a:.1f}" for a in accuracies) + note


def main(argv):
  del argv
  seed_rows, summary_rows, sources = [], [], set()
  for model in FLAGS.models:
    finals = {column: [] for column in COLUMNS}
    fell = {column: 0 for column in COLUMNS}
    for seed in map(int, FLAGS.seeds):
      found = curves(model, seed)
      seed_rows.append(f"| {model} | {seed} | "
                       + " | ".join(cell(found.get(column)) for column in COLUMNS) + " |")
      for column, (accuracies, final, source) in found.items():
        finals[column].append(final)
        fell[column] += bool(falls(accuracies))
        sources.add(source)
    summary_rows.append(
        f"| {model} | " + " | ".join(
            f"{mean_std(finals[c])} ({len(finals[c])} run{'s' * (len(finals[c]) > 1)}, "
            f"{fell[c]} with a fall)"
            if finals[c] else "not run" for c in COLUMNS) + " |")
  text = "\n".join([
      "# Optax's Adam, Keras' Adam, Keras 3: the recurrent-dropout models over seeds "
      f"{', '.join(FLAGS.seeds)}",
      "",
      "Built by `python experiments/optimizer_study.py` from the run records below. Test "
      "accuracy % of the full 25,000 test reviews after each of the 3 epochs (the tutorial's "
      "recipe: batch 64, learning rate 1e-3, dropout 0.2 and recurrent dropout 0.2, the test "
      f"split as validation_data); a fall is a drop of {FALL_POINTS:.0f} points or more from one "
      "epoch to the next. Machine: AMD EPYC, 2 cores, no accelerator, shared with other jobs.",
      "",
      "| model | final test accuracy %, " + " | ".join(COLUMNS.values()) + " |",
      "|---" * (len(COLUMNS) + 1) + "|",
      *summary_rows,
      "",
      "| model | seed | " + " | ".join(COLUMNS.values()) + " |",
      "|---" * (len(COLUMNS) + 2) + "|",
      *seed_rows,
      "",
      "Records: " + ", ".join(f"`{s}`" for s in sorted(sources)) + ".",
  ]) + "\n"
  (RESULTS / "keras_adam.md").write_text(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
