"""Trains the tutorial's models in Keras 3 itself, on seqjax's arrays: the peer runs.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/keras_tutorial.py \
      --models=lstm_recurrent_dropout --seeds=8,9

As ../shared/reference/keras_tutorial.md was made: the Keras twin of configs/<model>.py
(`seqjax.keras_reference.keras_model`), fed the same preprocessed arrays as seqjax
(`input_pipeline.load_data`); `keras.utils.set_random_seed(seed)` before the model is built;
Adam(1e-3), binary cross-entropy, batch 64, 3 epochs, `validation_data` = the test split (as
the tutorial); TensorFlow's intra- and inter-op threads = 2; the final figures are the trained
model's. Each run's record goes to experiments/results/runs/keras3/<model>/seed_<seed>.json;
a run with a record is not trained again.
"""

import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

from common import RESULTS, ROOT, git_commit, machine  # noqa: E402
from seqjax import config as config_lib  # noqa: E402
from seqjax import input_pipeline, keras_reference  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["lstm_recurrent_dropout"], "Configs (names in configs/) to run.")
flags.DEFINE_list("seeds", ["8", "9"], "Seeds to run each model with.")
flags.DEFINE_integer("threads", 2, "TensorFlow's intra- and inter-op threads.")
flags.DEFINE_integer("max_examples", 0, "Train and test on this many examples, to try the "
                     "script out; no record is written. 0 = all.")


def record_path(model: str, seed: int):
  return RESULTS / "runs" / "keras3" / model / f"seed_{seed}.json"


def train(model_name: str, seed: int) -> dict:
  """One Keras run: per-epoch train and test loss and accuracy, and times."""
  import keras
  import tensorflow as tf

  commit = git_commit()  # Now, before the code can change under a long run.
  config = config_lib.from_file(ROOT / "configs" / f"{model_name}.py")
  config.update(max_train_examples=FLAGS.max_examples, max_eval_examples=FLAGS.max_examples)
  data = input_pipeline.load_data(config)
  keras.utils.set_random_seed(seed)
  model = keras_reference.keras_model(config)
  model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                loss="binary_crossentropy", metrics=["accuracy"])
  epochs = []

  class Timer(keras.callbacks.Callback):

    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.time()

    def on_test_begin(self, logs=None):
      self.train_seconds = time.time() - self.start
      self.test_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
      epochs.append({"epoch": epoch + 1, "train_loss": logs["loss"],
                     "train_accuracy": logs["accuracy"], "test_loss": logs["val_loss"],
                     "test_accuracy": logs["val_accuracy"],
                     "train_seconds": round(self.train_seconds, 2),
                     "eval_seconds": round(time.time() - self.test_start, 2)})
      print(json.dumps(epochs[-1]), flush=True)

  model.fit(data.train.inputs, data.train.labels, batch_size=config.batch_size,
            epochs=config.num_epochs, validation_data=(data.test.inputs, data.test.labels),
            callbacks=[Timer()], verbose=2)
  loss, accuracy = model.evaluate(data.test.inputs, data.test.labels, batch_size=256, verbose=0)
  return {"framework": f"keras {keras.__version__} (tensorflow {tf.__version__})",
          "config_name": config.name, "seed": seed, "num_params": model.count_params(),
          "test_accuracy": accuracy, "test_loss": loss, "epochs": epochs,
          "threads": FLAGS.threads, "machine": machine(), "seqjax_commit": commit}


def main(argv):
  del argv
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
  tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
  for model in FLAGS.models:
    for seed in map(int, FLAGS.seeds):
      path = record_path(model, seed)
      if path.exists():
        print("already run:", path)
        continue
      record = train(model, seed)
      if FLAGS.max_examples:
        continue
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(record, indent=2) + "\n")
      print("wrote", path, flush=True)


if __name__ == "__main__":
  app.run(main)
