"""How long training stops for a checkpoint: orbax's synchronous save against its asynchronous one.

  python benchmarks/checkpoint_pause.py --config=configs/bilstm.py --saves=8

Trains the config's model on random batches of its shapes (no dataset needed) and saves a
checkpoint every `--every` steps, as `--config.checkpoint_every_steps` does, once with each
kind of save, alternating. Reported: the median time the loop spends in `Checkpoints.save`
once the steps before it are done (the pause), and the wall-clock time of the whole loop beside the same steps without saves,
since an asynchronous write still takes CPU time from the steps that follow it.
"""

import json
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from seqjax import checkpoints as ckpt
from seqjax import models, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/bilstm.py", "Config whose model is saved.")
flags.DEFINE_integer("saves", 8, "Checkpoints saved per kind of save.")
flags.DEFINE_integer("every", 3, "Training steps between two checkpoints.")
flags.DEFINE_integer("rounds", 2, "Alternating rounds of (none, synchronous, asynchronous).")


def run(config, save: str | None, directory: str) -> dict:
  """Trains FLAGS.saves * FLAGS.every steps, saving every FLAGS.every steps unless save=None."""
  model = models.create_model(config)
  state = train.create_train_state(config, model, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(1, config.top_words, (config.batch_size, config.max_length),
                                  dtype=np.int32),
           "labels": rng.integers(0, 2, config.batch_size, dtype=np.int32),
           "mask": np.ones(config.batch_size, np.float32)}
  dropout_rng = jax.random.PRNGKey(1)
  state, _ = train.train_step(state, batch, dropout_rng)  # Compiles.
  jax.block_until_ready(state)
  checkpoints = (ckpt.Checkpoints(directory, keep=2, asynchronous=save == "asynchronous")
                 if save else None)
  metrics = train.Metrics.empty()
  pauses = []
  start = time.perf_counter()
  for step in range(1, FLAGS.saves * FLAGS.every + 1):
    state, metrics = train.train_step(state, batch, dropout_rng)
    if checkpoints and step % FLAGS.every == 0:
      jax.block_until_ready(state)  # Else the pause would include the steps still running.
      paused = time.perf_counter()
      checkpoints.save(step, state, metrics)
      pauses.append(time.perf_counter() - paused)
  if checkpoints:
    checkpoints.close()  # Waits for the last write, as the end of training does.
  jax.block_until_ready(state)
  return {"loop_seconds": time.perf_counter() - start, "pauses": pauses}


def main(argv):
  del argv
  config = FLAGS.config
  results = {kind: [] for kind in ("none", "synchronous", "asynchronous")}
  for _ in range(FLAGS.rounds):
    for kind in results:
      with tempfile.TemporaryDirectory() as directory:
        results[kind].append(run(config, None if kind == "none" else kind, directory))
  baseline = statistics.median(r["loop_seconds"] for r in results["none"])
  summary = {"config": config.name, "steps": FLAGS.saves * FLAGS.every, "every": FLAGS.every,
             "rounds": FLAGS.rounds, "loop_seconds_without_saves": round(baseline, 3)}
  for kind in ("synchronous", "asynchronous"):
    pauses = [p for r in results[kind] for p in r["pauses"]]
    loop = statistics.median(r["loop_seconds"] for r in results[kind])
    summary[kind] = {"median_pause_ms": round(1000 * statistics.median(pauses), 1),
                     "max_pause_ms": round(1000 * max(pauses), 1),
                     "loop_seconds": round(loop, 3),
                     "cost_per_checkpoint_ms": round(1000 * (loop - baseline) / FLAGS.saves, 1)}
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
