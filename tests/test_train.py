"""Training: it learns, it is reproducible, and `python -m seqjax.main` runs end to end."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

import seqjax
from conftest import (PROJECT_ROOT, REAL_DATA_DIR, TinyReviews, load_config, run_on_a_terminal,
                      tiny_overrides)
from seqjax import config as config_lib
from seqjax import input_pipeline, models, train
from seqjax import workdir as workdir_lib
from seqjax.errors import ConfigError


def tiny_config(tiny_data_dir, tmp_path, **overrides):
  config = config_lib.base_config()
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"))
  config.update(log_every_steps=1000, **overrides)
  return config


def run_main(workdir, *overrides, config="configs/lstm.py"):
  return subprocess.run(
      [sys.executable, "-m", "seqjax.main", f"--config={PROJECT_ROOT / config}",
       f"--workdir={workdir}", *overrides],
      cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


def overrides_as_flags(overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def test_learns_a_label_set_by_a_token_far_from_the_end():
  """The label is the first token of 40; the LSTM must carry it through 39 distractors."""
  rng = np.random.default_rng(0)

  def make(n):
    labels = rng.integers(0, 2, n).astype(np.int32)
    inputs = rng.integers(5, 20, (n, 40)).astype(np.int32)
    inputs[:, 0] = 3 + labels
    return input_pipeline.Split(inputs, labels)

  train_split, test_split = make(1024), make(256)
  config = config_lib.base_config()
  config.update(top_words=20, max_length=40, embedding_dim=8, lstm_units=16,
                learning_rate=0.003, batch_size=32)
  state = train.create_train_state(config, models.create_model(config), jax.random.PRNGKey(0))
  dropout_rng = jax.random.PRNGKey(1)
  for epoch in range(10):
    order = input_pipeline.epoch_order(len(train_split), 0, epoch)
    for batch in input_pipeline.batches(train_split, 32, order):
      state, _ = train.train_step(state, batch, dropout_rng)
  assert train.evaluate(state, test_split, 64)["accuracy"] > 0.95


def test_same_seed_gives_identical_parameters(tiny_data_dir, tmp_path):
  def train_with_seed(name, seed):
    config = tiny_config(tiny_data_dir, tmp_path, seed=seed, num_epochs=1,
                         embedding_dropout=0.2, lstm_recurrent_dropout=0.2)
    results = train.train_and_evaluate(config, str(tmp_path / name))
    return results, jax.tree_util.tree_leaves(seqjax.load(str(tmp_path / name)).params)

  first_results, first = train_with_seed("a", seed=3)
  second_results, second = train_with_seed("b", seed=3)
  _, other = train_with_seed("c", seed=4)
  assert first_results["test_loss"] == second_results["test_loss"]
  for x, y in zip(first, second, strict=True):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, z) for x, z in zip(first, other, strict=True))


def test_main_trains_end_to_end_and_writes_its_outputs(tiny_data_dir, tmp_path):
  workdir = tmp_path / "run"
  overrides = tiny_overrides(tiny_data_dir, tmp_path / "cache")
  result = run_main(workdir, *overrides_as_flags(overrides))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Total Parameters" in result.stdout  # The model summary comes first.
  assert "ETA" not in result.stderr.replace("ETA: ", "")  # No progress line off a terminal
  # (clu's own "ETA: " log note aside).

  results = json.loads((workdir / "results.json").read_text())
  assert results["config_name"] == "lstm"
  assert results["num_params"] == 30 * 8 + 4 * 8 * (8 + 8 + 1) + 8 + 1
  assert results["num_test_examples"] == TinyReviews.SPLIT_SIZES["test"]  # None dropped.
  assert results["num_train_examples"] == TinyReviews.SPLIT_SIZES["train"]
  for key in ("test_accuracy", "test_loss", "train_seconds", "train_examples_per_second"):
    assert isinstance(results[key], float) and results[key] > 0

  epochs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [e["epoch"] for e in epochs] == [1, 2]
  assert epochs[-1]["test_accuracy"] == results["test_accuracy"]
  assert json.loads((workdir / "vocabulary.json").read_text())["top_words"] == 30
  assert json.loads((workdir / "config.json").read_text())["dataset"] == "tiny_reviews"
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
  assert os.listdir(workdir / "checkpoints")


def test_main_on_a_terminal_shows_progress_with_eta_for_training_and_evaluation(tiny_data_dir,
                                                                               tmp_path):
  overrides = tiny_overrides(tiny_data_dir, tmp_path / "cache")
  output = run_on_a_terminal(
      ["-m", "seqjax.main", f"--config={PROJECT_ROOT / 'configs/lstm.py'}",
       f"--workdir={tmp_path / 'run'}", *overrides_as_flags(overrides)])
  for what in ("epoch 1/2", "epoch 2/2", "evaluate test"):
    line = next((part for part in output.replace("\n", "\r").split("\r")
                 if part.startswith(f"{what}:") and "ETA" in part), None)
    assert line is not None, f"no progress line for {what!r} in: {output[-2000:]}"
    assert "ex/s" in line
  assert re.search(r"ex/s, ETA [0-9:]+, step \d+/13\]", output)  # The step, too.
  assert "epoch 2/2  train_loss" in output  # The log lines are still there.


def test_rerun_resumes_and_extends_to_the_same_result(tiny_data_dir, tmp_path):
  """configs/lstm.py, with Keras' Adam: its state is checkpointed and restored too."""
  overrides = tiny_overrides(tiny_data_dir, tmp_path / "cache")
  straight = train.train_and_evaluate(
      tiny_config(tiny_data_dir, tmp_path, num_epochs=2, optimizer="keras_adam"),
      str(tmp_path / "straight"))
  train.train_and_evaluate(tiny_config(tiny_data_dir, tmp_path, num_epochs=1,
                                       optimizer="keras_adam"), str(tmp_path / "resumed"))
  resumed = run_main(tmp_path / "resumed", *overrides_as_flags(overrides))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from the checkpoint at step 13" in resumed.stderr
  results = json.loads((tmp_path / "resumed" / "results.json").read_text())
  assert [e["epoch"] for e in results["epochs"]] == [1, 2]
  assert results["test_loss"] == straight["test_loss"]
  assert results["test_accuracy"] == straight["test_accuracy"]


def test_workdir_of_another_config_is_refused(tiny_data_dir, tmp_path):
  train.train_and_evaluate(tiny_config(tiny_data_dir, tmp_path, num_epochs=1),
                           str(tmp_path / "run"))
  with pytest.raises(ConfigError, match="lstm_units: 8 -> 9"):
    train.train_and_evaluate(tiny_config(tiny_data_dir, tmp_path, lstm_units=9),
                             str(tmp_path / "run"))


def test_missing_data_exits_at_once_with_where_and_how(tmp_path):
  result = run_main(tmp_path / "run", f"--config.data_dir={tmp_path / 'nothing'}",
                    f"--config.cache_dir={tmp_path / 'cache'}", "--config.download=False")
  assert result.returncode == 1
  assert str(tmp_path / "nothing") in result.stderr and "TFDS_DATA_DIR" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_every_config_is_named_after_its_file():
  for path in sorted((PROJECT_ROOT / "configs").glob("*.py")):
    assert load_config(path.stem).name == path.stem


@pytest.mark.parametrize("name", ["lstm_dropout", "lstm_recurrent_dropout", "bilstm",
                                  "cnn_lstm", "naive_bayes_bag", "tuned_bilstm",
                                  "bilstm_naive_bayes_bag"])
def test_every_config_trains(tiny_data_dir, tmp_path, name):
  config = load_config(name)
  tiny = tiny_overrides(tiny_data_dir, tmp_path / "cache")
  if not config.lstm_units:
    del tiny["lstm_units"]  # A bag alone stays one.
  if config.embedding_top_words:
    tiny["embedding_top_words"] = tiny["top_words"] // 2
  config.update(tiny, num_epochs=1, log_every_steps=1000)
  if config.validation_size:
    config.validation_size = 20
  results = train.train_and_evaluate(config, str(tmp_path / name))
  assert results["config_name"] == name and np.isfinite(results["test_loss"])


@pytest.mark.skipif(not REAL_DATA_DIR.exists(),
                    reason=f"the prepared IMDB copy {REAL_DATA_DIR} is absent")
def test_lstm_learns_real_imdb_reviews(tmp_path):
  """3 epochs on 5,000 real reviews cut to 150 words: about 84% here; chance is 50%."""
  config = load_config("lstm")
  config.update(data_dir=str(REAL_DATA_DIR), cache_dir=str(tmp_path / "cache"), download=False,
                max_train_examples=5000, max_eval_examples=2000, max_length=150,
                num_epochs=3, log_every_steps=1000)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["num_params"] == 213_301
  assert results["num_train_examples"] == 5000 and results["num_test_examples"] == 2000
  assert results["test_accuracy"] > 0.75


def test_bucketed_evaluation_equals_full_length_evaluation_for_a_masked_model():
  config = load_config("bilstm_bucketed")
  config.update(top_words=30, max_length=60, embedding_dim=8, lstm_units=8)
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 61, 50)
  inputs = np.zeros((50, 60), np.int32)
  for row, n in enumerate(lengths):
    inputs[row, :n] = rng.integers(1, 30, n)
  split = input_pipeline.Split(inputs, rng.integers(0, 2, 50).astype(np.int32))
  state = train.create_train_state(config, models.create_model(config), jax.random.PRNGKey(0))
  full = train.evaluate(state, split, 16)
  bucketed = train.evaluate(state, split, 16, bucket_width=20)
  assert bucketed["loss"] == pytest.approx(full["loss"], abs=1e-6)
  assert bucketed["accuracy"] == full["accuracy"]


def test_bucketed_config_trains_end_to_end(tiny_data_dir, tmp_path):
  config = load_config("cnn_lstm_bucketed")
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"), num_epochs=1,
                log_every_steps=1000, bucket_width=10)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["config_name"] == "cnn_lstm_bucketed"
  assert results["num_test_examples"] == TinyReviews.SPLIT_SIZES["test"]
  assert np.isfinite(results["test_loss"])


@pytest.mark.parametrize("clip, smaller", [(0.0, False), (1e-12, True)])
def test_gradient_clipping_shrinks_adams_first_update(clip, smaller):
  """Adam's first step is about lr * sign(g) whatever |g|, unless clipping makes g tiny
  against its epsilon."""
  config = config_lib.base_config()
  config.gradient_clip_norm = clip
  optimizer = train.create_optimizer(config)
  grads = {"w": jnp.full((3,), 5.0)}
  updates, _ = optimizer.update(grads, optimizer.init(grads))
  size = float(jnp.max(jnp.abs(updates["w"])))
  assert (size < 1e-3 * config.learning_rate) if smaller else size > 0.99 * config.learning_rate


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_weight_decay_shrinks_parameters_by_rate_times_decay_where_the_gradient_is_zero(
    weight_decay):
  config = config_lib.base_config()
  config.weight_decay = weight_decay
  optimizer = train.create_optimizer(config)
  params = {"w": jnp.full((3,), 2.0)}
  updates, _ = optimizer.update({"w": jnp.zeros((3,))}, optimizer.init(params), params)
  np.testing.assert_allclose(updates["w"], -config.learning_rate * weight_decay * params["w"],
                             rtol=1e-6)


def test_cosine_schedule_decays_to_zero_at_the_last_step():
  config = config_lib.base_config()
  config.update(learning_rate_schedule="cosine", num_epochs=2)
  optimizer = train.create_optimizer(config, steps_per_epoch=5)
  grads = {"w": jnp.ones((2,))}
  state = optimizer.init(grads)
  sizes = []
  for _ in range(11):
    updates, state = optimizer.update(grads, state)
    sizes.append(float(jnp.max(jnp.abs(updates["w"]))))
  assert sizes[0] > 0.99 * config.learning_rate
  assert sizes[0] > sizes[5] > sizes[9] > 0 and sizes[10] == 0.0


def test_moving_average_is_the_bias_corrected_average_of_every_steps_parameters():
  config = config_lib.base_config()
  config.update(top_words=20, max_length=6, embedding_dim=4, lstm_units=3, ema_decay=0.8)
  state = train.create_train_state(config, models.create_model(config), jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  split = input_pipeline.Split(rng.integers(3, 20, (8, 6)).astype(np.int32),
                               rng.integers(0, 2, 8).astype(np.int32))
  batch = next(input_pipeline.batches(split, 8, np.arange(8)))
  trajectory = []
  for _ in range(3):
    state, _ = train.train_step(state, batch, jax.random.PRNGKey(1))
    trajectory.append(state.params)
  d, t = config.ema_decay, len(trajectory)
  weights = [(1 - d) * d ** (t - s) / (1 - d ** t) for s in range(1, t + 1)]
  expected = jax.tree_util.tree_map(lambda *p: sum(w * x for w, x in zip(weights, p, strict=True)),
                                    *trajectory)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                         state.ema_params, expected)
  # Evaluation reads the average, not the last step's parameters.
  averaged = train.evaluate(state, split, 8)
  assert averaged == train.evaluate(state.replace(params=state.ema_params, ema_params=None),
                                    split, 8)
  assert averaged["loss"] != train.evaluate(state.replace(ema_params=None), split, 8)["loss"]


def test_moving_average_is_checkpointed_so_a_resumed_run_ends_the_same(tiny_data_dir, tmp_path):
  def run(name, num_epochs):
    config = tiny_config(tiny_data_dir, tmp_path, num_epochs=num_epochs, ema_decay=0.9)
    return train.train_and_evaluate(config, str(tmp_path / name))

  straight = run("straight", 2)
  run("resumed", 1)
  resumed = run("resumed", 2)
  assert resumed["test_loss"] == straight["test_loss"]
  assert resumed["test_accuracy"] == straight["test_accuracy"]


def test_run_written_before_new_config_keys_still_resumes(tmp_path):
  """A config.json without keys added later (here `pooling`) reads as having their defaults."""
  config = config_lib.base_config()
  saved = json.loads(config.to_json())
  del saved["pooling"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  workdir_lib.check_config(str(tmp_path), config)  # No ConfigError.
  config.pooling = "max"
  with pytest.raises(ConfigError, match="pooling: 'last' -> 'max'"):
    workdir_lib.check_config(str(tmp_path), config)


def test_test_split_kept_back_is_evaluated_once_on_the_best_validation_epoch(tiny_data_dir,
                                                                             tmp_path):
  def run(name, evaluate_test):
    config = tiny_config(tiny_data_dir, tmp_path, num_epochs=3, validation_size=40,
                         evaluate_test=evaluate_test)
    return train.train_and_evaluate(config, str(tmp_path / name))

  never = run("never", "never")
  assert not any(k.startswith("test_") for k in never) and "test_loss" not in never["epochs"][0]
  kept_back = run("kept_back", "best_epoch")
  assert not any(k.startswith("test_") for e in kept_back["epochs"] for k in e)
  best = kept_back["best_epoch"]
  assert kept_back["test_evaluated_at_epoch"] == best
  # The same training, with the test split evaluated after every epoch (as the tutorial):
  # the kept-back figure is that of the best validation epoch, not of the last epoch.
  every_epoch = run("every_epoch", "every_epoch")
  assert every_epoch["epochs"][best - 1]["test_accuracy"] == kept_back["test_accuracy"]
  assert every_epoch["epochs"][best - 1]["test_loss"] == pytest.approx(kept_back["test_loss"],
                                                                        abs=1e-6)


def test_adam_uses_keras_epsilon():
  """Keras' Adam has epsilon 1e-7: a first gradient of 1e-7 then moves by half the rate."""
  config = config_lib.base_config()
  optimizer = train.create_optimizer(config)
  grads = {"w": jnp.full((2,), 1e-7)}
  updates, _ = optimizer.update(grads, optimizer.init(grads))
  np.testing.assert_allclose(updates["w"], -0.5 * config.learning_rate, rtol=1e-3)


def test_adversarial_perturbation_is_epsilon_word_lengths_per_review_along_the_gradient():
  rng = np.random.default_rng(0)
  grad = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
  perturbation = train.adversarial_perturbation(grad, table, 0.5)
  word_length = np.sqrt(np.mean(np.sum(np.square(table), axis=1)))
  norms = np.linalg.norm(np.asarray(perturbation).reshape(3, -1), axis=1)
  np.testing.assert_allclose(norms, 0.5 * word_length, rtol=1e-5)
  cosines = np.sum(np.asarray(perturbation * grad).reshape(3, -1), axis=1) / (
      norms * np.linalg.norm(np.asarray(grad).reshape(3, -1), axis=1))
  np.testing.assert_allclose(cosines, 1.0, rtol=1e-5)
  # Scaling up the embeddings scales the perturbation with them.
  np.testing.assert_allclose(train.adversarial_perturbation(grad, 3 * table, 0.5),
                             3 * perturbation, rtol=1e-5)


def _tiny_masked_batch():
  config = load_config("bilstm_bucketed")
  config.update(top_words=30, max_length=12, embedding_dim=8, lstm_units=6, conv_filters=4,
                pooling="max_mean")
  rng = np.random.default_rng(1)
  inputs = np.zeros((8, 12), np.int32)
  for row, n in enumerate(rng.integers(2, 13, 8)):
    inputs[row, :n] = rng.integers(1, 30, n)
  split = input_pipeline.Split(inputs, rng.integers(0, 2, 8).astype(np.int32))
  return config, next(input_pipeline.batches(split, 8, np.arange(8)))


def test_adversarial_perturbation_raises_the_loss_more_than_a_random_one_of_its_size():
  config, batch = _tiny_masked_batch()
  model = models.create_model(config)
  params = model.init(jax.random.PRNGKey(0), batch["inputs"])["params"]

  def loss(perturbation):
    logits = model.apply({"params": params}, batch["inputs"], perturbation=perturbation)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["labels"]))

  zeros = jnp.zeros((8, 12, 8))
  adversarial = train.adversarial_perturbation(jax.grad(loss)(zeros),
                                               models.embedding_table(params), 0.5)
  noise = jax.random.normal(jax.random.PRNGKey(2), zeros.shape)
  random = noise * jnp.linalg.norm(adversarial) / jnp.linalg.norm(noise)
  assert loss(None) == loss(zeros)
  assert loss(adversarial) > loss(random) + 1e-3 and loss(adversarial) > loss(zeros) + 1e-3


def test_adversarial_step_adds_the_perturbed_batchs_gradient_to_the_clean_one():
  """With SGD at rate 1 the update is minus the gradient: a vanishing epsilon gives twice the
  plain step's (the same loss, under the same dropout, counted twice), a real one does not."""
  config, batch = _tiny_masked_batch()
  config.update(embedding_dropout=0.3, word_dropout=0.2, output_dropout=0.5)
  model = models.create_model(config)
  params = model.init(jax.random.PRNGKey(0), batch["inputs"])["params"]
  state = train.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(1.0))

  def update(epsilon):
    new, _ = train.train_step(state, batch, jax.random.PRNGKey(3), adversarial_epsilon=epsilon)
    return jax.tree_util.tree_map(jnp.subtract, new.params, params)

  plain, tiny, real = update(0.0), update(1e-6), update(1.0)
  jax.tree_util.tree_map(lambda t, p: np.testing.assert_allclose(t, 2 * p, rtol=1e-3,
                                                                 atol=1e-6), tiny, plain)
  differences = jax.tree_util.tree_map(lambda r, p: float(jnp.max(jnp.abs(r - 2 * p))),
                                       real, plain)
  assert max(jax.tree_util.tree_leaves(differences)) > 1e-3


def test_naive_bayes_ratios_come_from_the_training_split_and_training_never_moves_them():
  rng = np.random.default_rng(0)
  split = input_pipeline.Split(rng.integers(1, 30, (64, 6)).astype(np.int32),
                               rng.integers(0, 2, 64).astype(np.int32))
  config = config_lib.base_config()
  config.update(top_words=30, max_length=6, lstm_units=0, ngram_order=2, ngram_buckets=100,
                ngram_bag="naive_bayes", weight_decay=0.1, gradient_clip_norm=1.0,
                ema_decay=0.9)
  state = train.create_train_state(config, models.create_model(config), jax.random.PRNGKey(0),
                                   train_split=split)
  ratios = models.naive_bayes_ratios(split.inputs, split.labels, 30, 2, 100)
  assert np.any(ratios != 0)
  np.testing.assert_array_equal(state.params["naive_bayes_bag"][models.LOG_COUNT_RATIO], ratios)
  for batch in input_pipeline.batches(split, 16):
    state, _ = train.train_step(state, batch, jax.random.PRNGKey(1))
  bag = state.params["naive_bayes_bag"]
  np.testing.assert_array_equal(bag[models.LOG_COUNT_RATIO], ratios)
  np.testing.assert_allclose(state.ema_params["naive_bayes_bag"][models.LOG_COUNT_RATIO], ratios,
                             rtol=1e-6)
  assert np.any(bag["weight"] != 0)


def test_bag_alone_learns_and_predicts_from_its_checkpoint_what_training_reported(
    tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, tmp_path, lstm_units=0, ngram_order=2,
                       ngram_buckets=1000, ngram_bag="naive_bayes", num_epochs=3)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["test_accuracy"] > 0.9 and results["num_params"] == 1001
  test = tfds.data_source("tiny_reviews", data_dir=tiny_data_dir, download=False)["test"]
  records = [test[i] for i in range(len(test))]
  probabilities = seqjax.load(str(tmp_path / "run")).predict([r["text"] for r in records])
  accuracy = np.mean((probabilities > 0.5) == np.array([r["label"] == 1 for r in records]))
  assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)
