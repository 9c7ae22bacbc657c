"""How far seqjax's training drifts from Keras 3's, step for step, with each optimizer.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/keras_drift.py --model=lstm --steps=30

From the same initial weights (seqjax's, copied into the Keras twin), both train on the same
batches of 64 pre-padded training reviews (the first steps x 64, in order), without dropout:
seqjax with `train.train_step`, Keras 3 with `train_on_batch`. Printed, for each optimizer
setting: the largest |seqjax - Keras| of each parameter after the last step, beside how far
Keras moved it from its initial value, and the largest difference of the batch losses.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from common import ROOT, machine  # noqa: E402
from seqjax import config as config_lib  # noqa: E402
from seqjax import input_pipeline, keras_reference, models, train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "lstm", "A tutorial config in configs/.")
flags.DEFINE_integer("steps", 30, "Training steps.")

SETTINGS = {
    "optax Adam": {"optimizer": "adam"},
    "Keras' Adam": {"optimizer": "keras_adam"},
    "Keras' Adam + Keras 3's embedding squares": {"optimizer": "keras_adam",
                                                  "keras3_embedding_squares": True},
}


def drift(config, data: input_pipeline.Split) -> tuple[list[float], list[float], float]:
  """(max |seqjax - Keras| per weight, max |Keras' move| per weight, max loss difference)."""
  state = train.create_train_state(config, models.create_model(config), jax.random.PRNGKey(0))
  initial = keras_reference.keras_weights(state.params)
  model = keras_reference.compiled_twin(config, state.params)
  loss_differences = []
  for step, batch in enumerate(input_pipeline.batches(data, config.batch_size)):
    if step == FLAGS.steps:
      break
    state, metrics = train.train_step(state, jax.tree_util.tree_map(jnp.asarray, batch),
                                      jax.random.PRNGKey(0),
                                      embedding_squares=config.keras3_embedding_squares)
    keras_loss = model.train_on_batch(batch["inputs"], batch["labels"])
    loss_differences.append(abs(float(metrics.compute()["loss"]) - float(keras_loss)))
  moves = [float(np.max(np.abs(w - w0))) for w, w0 in zip(model.get_weights(), initial,
                                                          strict=True)]
  return (keras_reference.weight_differences(state.params, model), moves,
          max(loss_differences))


def main(argv):
  del argv
  config = config_lib.from_file(ROOT / "configs" / f"{FLAGS.model}.py")
  config.update(embedding_dropout=0.0, output_dropout=0.0, lstm_dropout=0.0,
                lstm_recurrent_dropout=0.0,
                max_train_examples=FLAGS.steps * config.batch_size, max_eval_examples=1)
  data = input_pipeline.load_data(config).train
  names = [f"{'/'.join(path)}" for path in _weight_names(config)]
  print(f"{FLAGS.model}, {FLAGS.steps} steps of {config.batch_size} reviews, no dropout; "
        f"{machine()}")
  print("| setting | " + " | ".join(names) + " | batch loss |")
  print("|---" * (len(names) + 2) + "|")
  for label, changes in SETTINGS.items():
    config.update(changes)
    differences, moves, loss = drift(config, data)
    print(f"| {label}: max difference | " + " | ".join(f"{d:.1e}" for d in differences)
          + f" | {loss:.1e} |", flush=True)
  print("| Keras 3: max move from init | " + " | ".join(f"{m:.1e}" for m in moves) + " | |")


def _weight_names(config) -> list[tuple[str, ...]]:
  """The parameters' names, in Keras' order."""
  shapes = jax.eval_shape(lambda: train.create_train_state(
      config, models.create_model(config), jax.random.PRNGKey(0)).params)
  order = {"embedding": 0, "conv_front_end": 1, "lstm": 2, "bidirectional": 2, "dense": 3}
  paths = [tuple(getattr(k, "key", str(k)) for k in path)
           for path, _ in jax.tree_util.tree_leaves_with_path(shapes)]
  within = {"embedding": 0, "kernel": 0, "recurrent_kernel": 1, "bias": 2}
  return sorted(paths, key=lambda p: (order[p[0]], p[1] == "backward", within[p[-1]]))


if __name__ == "__main__":
  app.run(main)
