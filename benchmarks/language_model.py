"""Times a training step of configs/language_model.py with each output layer: the full softmax
and sampled softmaxes of several sizes, and the full softmax over fewer words.

  python benchmarks/language_model.py --lengths=250 --steps=5

A batch of `batch_size` reviews of `length` random word ids (the bucketed batches' typical
length is about 250); the median of --steps steps after a compiling one. Writes
benchmarks/language_model.json.
"""

import json
import pathlib
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from seqjax import config as config_lib
from seqjax import input_pipeline, models, native_lstm, train

ROOT = pathlib.Path(__file__).resolve().parent.parent
FLAGS = flags.FLAGS
flags.DEFINE_list("lengths", ["250"], "Review lengths (steps) to time.")
flags.DEFINE_integer("steps", 5, "Timed steps per setting.")
flags.DEFINE_string("output", str(ROOT / "benchmarks" / "language_model.json"), "JSON output.")

# (name, overrides of configs/language_model.py).
SETTINGS = [
    ("full softmax, 30,000 words", {"lm_sampled_words": 0}),
    ("sampled softmax, 4,096 words", {"lm_sampled_words": 4096}),
    ("sampled softmax, 1,024 words (the config)", {}),
    ("sampled softmax, 256 words", {"lm_sampled_words": 256}),
    ("full softmax, 5,000 words", {"lm_sampled_words": 0, "top_words": 5000}),
    ("one direction, sampled softmax, 1,024 words", {"bidirectional": False}),
]


def time_step(overrides: dict, length: int) -> dict:
  config = config_lib.from_file(ROOT / "configs" / "language_model.py")
  config.update(overrides)
  model = models.create_model(config)
  state = train.create_train_state(config, model, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  inputs = rng.integers(3, config.top_words, (config.batch_size, length)).astype(np.int32)
  inputs[:, 0] = 1
  split = input_pipeline.Split(inputs, np.zeros(config.batch_size, np.int32))
  batch = next(input_pipeline.batches(split, config.batch_size))
  dropout_rng = jax.random.PRNGKey(1)
  start = time.perf_counter()
  state, m = train.train_step(state, batch, dropout_rng)
  jax.block_until_ready(m)
  first = time.perf_counter() - start
  times = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    state, m = train.train_step(state, batch, dropout_rng)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  step = statistics.median(times)
  words = config.batch_size * (length - 1)
  return {"length": length, "first_step_s": round(first, 2), "step_s": round(step, 4),
          "words_per_s": round(words / step), "top_words": config.top_words,
          "sampled_words": config.lm_sampled_words, "bidirectional": config.bidirectional}


def main(argv):
  del argv
  rows = []
  for length in map(int, FLAGS.lengths):
    for name, overrides in SETTINGS:
      row = {"setting": name, **time_step(overrides, length)}
      rows.append(row)
      print(f"{name:45s} T={length}  {row['step_s'] * 1000:8.1f} ms/step  "
            f"{row['words_per_s']:8d} words/s", flush=True)
  out = {"lstm_path": native_lstm.path_in_use(), "jax_version": jax.__version__, "rows": rows}
  pathlib.Path(FLAGS.output).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
