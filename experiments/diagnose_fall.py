"""Where a run's accuracy fell: its checkpoints read with dropout off and on, and its last epoch
replayed step by step.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/diagnose_fall.py \
      --run=runs/tutorial/bilstm/seed_9 --examples=2000

A run whose training accuracy holds while its test accuracy falls either overfits (then the
training reviews, read with dropout off, still score high) or behaves differently with dropout
off than with it on (then they score low too). For each kept checkpoint this reads the first
`--examples` reviews of the training and test splits five ways: dropout off; all of the run's
dropout on (one mask per review, as in a training step); all but the recurrent dropout; only
the recurrent dropout; and the mean probability over `--samples` dropout masks.

Then the last epoch is trained again from the checkpoint before it, with the run's own batch
order and dropout masks (both are functions of the seed and step; see `train.run_keys`),
logging each step's batch loss and the size of its parameter update, and every
`--probe_every` steps the accuracy of the first `--examples` training reviews with dropout
off. Prints markdown tables.
"""

import functools
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import checkpoints as ckpt
from seqjax import input_pipeline, models, train
from seqjax import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "A finished run's workdir.", required=True)
flags.DEFINE_integer("examples", 2000, "Reviews read from each split.")
flags.DEFINE_integer("samples", 8, "Dropout masks averaged for the 'mean over masks' column.")
flags.DEFINE_integer("probe_every", 25, "Steps between accuracy probes in the replay; 0: none.")


@functools.partial(jax.jit, static_argnames=("model", "dropout"))
def _probabilities(model, params, inputs, rng, dropout: bool):
  return jax.nn.sigmoid(model.apply({"params": params}, inputs, train=dropout,
                                    rngs={"dropout": rng}))


def probabilities(model, params, inputs: np.ndarray, dropout: bool = False,
                  seed: int = 0) -> np.ndarray:
  """(N,) P(positive) of `inputs` (N, T), read in chunks of 250; with `dropout` on, one mask
  per review drawn from `seed`."""
  return np.concatenate([
      np.asarray(_probabilities(model, params, jnp.asarray(inputs[i:i + 250]),
                                jax.random.PRNGKey(seed + i), dropout=dropout))
      for i in range(0, len(inputs), 250)])


def accuracies(config, params, split: input_pipeline.Split, samples: int) -> dict[str, float]:
  """Accuracy (%) of `split` under each way of reading it."""
  def model_with(**rates):
    changed = config.copy_and_resolve_references()
    changed.update(rates)
    return models.create_model(changed)

  ways = {
      "dropout off": (model_with(), False),
      "all dropout on": (model_with(), True),
      "no recurrent dropout": (model_with(lstm_recurrent_dropout=0.0), True),
      "recurrent dropout only": (model_with(lstm_dropout=0.0, embedding_dropout=0.0,
                                            word_dropout=0.0, output_dropout=0.0), True),
  }
  labels = split.labels
  found = {}
  for name, (model, dropout) in ways.items():
    draws = samples if name == "all dropout on" else 1
    mean = np.zeros(len(split), np.float32)
    for sample in range(draws):
      out = probabilities(model, params, split.inputs, dropout, seed=1000 * sample)
      if sample == 0:
        found[name] = 100 * np.mean((out > 0.5) == labels)
      mean += out / draws
    if draws > 1:
      found[f"mean over {draws} masks"] = 100 * np.mean((mean > 0.5) == labels)
  return found


def replay_last_epoch(config, data, checkpoints, target, steps: list[int], probe) -> list[str]:
  """Table rows of the last epoch trained again from the checkpoint before it."""
  state, _ = checkpoints.restore(steps[-2], target, train.Metrics.empty())
  _, dropout_rng = train.run_keys(config.seed)
  epoch = steps[-2] // input_pipeline.num_batches(len(data.train), config.batch_size)
  order = input_pipeline.train_order(data.train, config.batch_size, config.seed, epoch,
                                     bucketed=bool(config.bucket_width))

  @jax.jit
  def step_and_update_norm(state, batch):
    new, metrics = train._train_step(state, batch, dropout_rng,
                                     adversarial_epsilon=config.adversarial_epsilon,
                                     embedding_squares=config.keras3_embedding_squares)
    delta = jax.tree_util.tree_map(lambda a, b: a - b, new.params, state.params)
    return new, metrics.compute()["loss"], optax.global_norm(delta)

  rows = []
  for i, batch in enumerate(input_pipeline.batches(data.train, config.batch_size, order,
                                                   config.bucket_width)):
    state, loss, norm = step_and_update_norm(state, batch)
    step = int(state.step)
    if FLAGS.probe_every and (i + 1) % FLAGS.probe_every == 0 or step == steps[-1]:
      accuracy = probe(state.eval_params)
      rows.append(f"| {step} | {float(loss):.3f} | {float(norm):.4f} | {accuracy:.1f} |")
      print(rows[-1], flush=True)
    elif float(loss) > 1.0:
      rows.append(f"| {step} | {float(loss):.3f} | {float(norm):.4f} | |")
      print(rows[-1], flush=True)
  return rows


def main(argv):
  del argv
  config = workdir_lib.read_config(FLAGS.run)
  data = input_pipeline.load_data(config)
  splits = {name: input_pipeline.Split(s.inputs[:FLAGS.examples], s.labels[:FLAGS.examples])
            for name, s in (("train", data.train), ("test", data.test))}
  directory = os.path.join(os.path.abspath(FLAGS.run), workdir_lib.CHECKPOINTS)
  checkpoints = ckpt.Checkpoints(directory, keep=100, create=False)
  model = models.create_model(config)
  target = train.create_train_state(
      config, model, jax.random.PRNGKey(0),
      input_pipeline.num_batches(len(data.train), config.batch_size))
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  rows, header = [], None
  for step in steps:
    state, _ = checkpoints.restore(step, target, train.Metrics.empty())
    for name, split in splits.items():
      found = accuracies(config, state.eval_params, split, FLAGS.samples)
      header = header or list(found)
      rows.append(f"| {step} | {name} | " + " | ".join(f"{v:.1f}" for v in found.values()) + " |")
      print(rows[-1], flush=True)
  if FLAGS.probe_every:
    def probe_accuracy(params) -> float:
      split = splits["train"]
      return 100 * np.mean((probabilities(model, params, split.inputs) > 0.5) == split.labels)

    replay = replay_last_epoch(config, data, checkpoints, target, steps, probe_accuracy)
  checkpoints.close()
  print(f"\n{FLAGS.run}, first {FLAGS.examples} reviews of each split, accuracy %:\n")
  print("| step | split | " + " | ".join(header) + " |")
  print("|---" * (len(header) + 2) + "|")
  print("\n".join(rows))
  if FLAGS.probe_every:
    print(f"\nThe last epoch again from step {steps[-2]}: the batch's loss and the norm of the "
          "parameter update at every probe (and at any step whose loss exceeds 1); accuracy % "
          "of the same training reviews, dropout off:\n")
    print("| step | batch loss | update norm | accuracy % |\n|---|---|---|---|")
    print("\n".join(replay))


if __name__ == "__main__":
  app.run(main)
