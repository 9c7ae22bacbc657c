"""The language model (task='language_model') and classifiers started from it (init_from)."""

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import PROJECT_ROOT, TinyReviews, load_config, tiny_overrides
from seqjax import config as config_lib
from seqjax import input_pipeline, models, pretrained, train
from seqjax import workdir as workdir_lib
from seqjax.errors import ConfigError, DataError


def lm_config(tiny_data_dir, tmp_path, **overrides):
  """configs/language_model.py, small enough for `tiny_reviews`."""
  config = load_config("language_model")
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"), validation_size=30,
                lm_sampled_words=10, learning_rate=0.03, num_epochs=3, log_every_steps=1000,
                checkpoint_every_steps=0)
  config.update(overrides)
  return config


def classifier_config(tiny_data_dir, tmp_path, **overrides):
  """configs/pretrained_bilstm.py, small enough for `tiny_reviews`."""
  config = load_config("pretrained_bilstm")
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"), validation_size=20,
                num_epochs=1, log_every_steps=1000)
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def lm_workdir(tiny_data_dir, tmp_path_factory):
  """A bidirectional language model trained for three epochs on `tiny_reviews`' text."""
  tmp_path = tmp_path_factory.mktemp("lm")
  workdir = tmp_path / "lm"
  train.train_and_evaluate(lm_config(tiny_data_dir, tmp_path), str(workdir))
  return workdir


def test_language_model_learns_the_text_and_reports_perplexity(tiny_data_dir, tmp_path,
                                                               lm_workdir):
  results = json.loads((lm_workdir / workdir_lib.RESULTS).read_text())
  first, _, last = results["epochs"]
  # tiny_reviews are mostly 10 filler words drawn at random: their unigram frequencies are
  # nearly all there is to learn. A uniform guess over the 30 ids would give 30.
  data = input_pipeline.load_data(lm_config(tiny_data_dir, tmp_path))
  unigram = models.unigram_perplexity(data.train.inputs, data.validation.inputs, 30, True)
  assert last["validation_perplexity"] < min(first["validation_perplexity"], 1.1 * unigram)
  assert last["validation_perplexity"] == pytest.approx(np.exp(last["validation_loss"]))
  assert results["best_epoch"] == 3 and "test_accuracy" not in results
  assert results["num_test_examples"] == 0
  assert results["num_validation_examples"] == 30
  assert results["num_train_examples"] == sum(TinyReviews.SPLIT_SIZES[s]
                                              for s in ("train", "unsupervised")) - 30


def test_language_model_reads_its_splits_and_never_the_test_split(tiny_data_dir, tmp_path,
                                                                  monkeypatch):
  read = []
  open_sources = input_pipeline._open_sources

  class Recording(dict):
    def __getitem__(self, split):
      read.append(split)
      return super().__getitem__(split)

  monkeypatch.setattr(input_pipeline, "_open_sources",
                      lambda config: Recording(open_sources(config)))
  data = input_pipeline.load_data(lm_config(tiny_data_dir, tmp_path))
  assert sorted(set(read)) == ["train", "unsupervised"]
  assert len(data.test) == 0 and not data.train.labels.any()


def test_forward_predictions_see_only_the_words_before_and_backward_only_the_words_after():
  model = models.LanguageModel(vocab_size=20, embedding_dim=4, lstm_units=6, bidirectional=True)
  tokens = jnp.array([[1, 5, 6, 7, 8, 9, 0, 0]])
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  losses, _, real = model.apply({"params": params}, tokens)
  changed = tokens.at[0, 4].set(12)  # The word at position 4.
  changed_losses, _, _ = model.apply({"params": params}, changed)
  forward, backward = np.split(np.asarray(losses[0] != changed_losses[0]), 2)
  # Forward prediction p predicts word p + 1 from words 0..p; backward p predicts word p from
  # words p + 1 to the last real one (5). Exactly those that target or read word 4 change.
  np.testing.assert_array_equal(forward, [0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(backward, [1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(real[0], np.tile([1, 1, 1, 1, 1, 0, 0], 2))


def test_full_softmax_in_chunks_equals_the_whole_softmax():
  rng = np.random.default_rng(0)
  states = jnp.asarray(rng.normal(size=(37, 5)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, 37))
  weights = jnp.asarray(rng.normal(size=(11, 5)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=11), jnp.float32)
  losses, correct = models.full_softmax(states, targets, weights, bias, chunk=8)
  logits = states @ weights.T + bias
  want = jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(37), targets]
  np.testing.assert_allclose(losses, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(correct, jnp.argmax(logits, axis=1) == targets)


def test_log_uniform_draws_pick_each_word_as_often_as_their_expected_count_says():
  num, vocab = 200_000, 50
  ids = models.log_uniform_sample(jax.random.PRNGKey(0), num, vocab)
  counts = np.bincount(np.asarray(ids), minlength=vocab)
  expected = np.exp(np.asarray(models.log_expected_count(jnp.arange(vocab), num, vocab)))
  assert expected.sum() == pytest.approx(num, rel=1e-4)
  np.testing.assert_allclose(counts[:10], expected[:10], rtol=0.03)


def test_sampled_softmax_leaves_out_draws_of_the_target_and_corrects_for_their_counts():
  rng = np.random.default_rng(1)
  states = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  targets = jnp.array([0, 1, 2, 3, 7, 9])
  weights = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=10), jnp.float32)
  key = jax.random.PRNGKey(3)
  losses, beat = models.sampled_softmax(states, targets, weights, bias, key, 5)
  sampled = np.asarray(models.log_uniform_sample(key, 5, 10))
  assert np.isin(targets, sampled).any()  # The case this test is about occurs.

  def corrected(h, word):
    return float(h @ weights[word] + bias[word]
                 - models.log_expected_count(jnp.array(word), 5, 10))

  for h, t, loss, won in zip(states, np.asarray(targets), losses, beat):
    others = [corrected(h, s) for s in sampled if s != t]
    true = corrected(h, t)
    assert float(loss) == pytest.approx(np.log(np.exp(true) + np.sum(np.exp(others))) - true,
                                        rel=1e-5)
    assert bool(won) == (true > max(others, default=-np.inf))


def test_language_model_extended_by_a_rerun_ends_as_one_long_run(tiny_data_dir, tmp_path,
                                                                 lm_workdir):
  """A rerun resumes from the checkpoint, sampled words and dropout included."""
  train.train_and_evaluate(lm_config(tiny_data_dir, tmp_path, num_epochs=2),
                           str(tmp_path / "resumed"))
  resumed = train.train_and_evaluate(lm_config(tiny_data_dir, tmp_path),
                                     str(tmp_path / "resumed"))
  straight = json.loads((lm_workdir / workdir_lib.RESULTS).read_text())
  for key in ("train_loss", "validation_loss", "validation_accuracy"):
    assert [e[key] for e in resumed["epochs"]] == [e[key] for e in straight["epochs"]]


def test_classifier_starts_from_the_language_models_vocabulary_embedding_and_lstms(
    tiny_data_dir, tmp_path, lm_workdir):
  config = classifier_config(tiny_data_dir, tmp_path, init_from=str(lm_workdir))
  start = pretrained.load(str(lm_workdir), config)
  # The language model's softmax has no counterpart in the classifier.
  assert set(start.params) == {"embedding", "bidirectional", "softmax_weights", "softmax_bias"}
  state = train.create_train_state(config, models.create_model(config), jax.random.PRNGKey(0),
                                   start=start)
  fresh = train.create_train_state(config, models.create_model(config), jax.random.PRNGKey(0))
  for name in ("embedding", "bidirectional"):
    for got, want in zip(jax.tree_util.tree_leaves(state.params[name]),
                         jax.tree_util.tree_leaves(start.params[name]), strict=True):
      np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree_util.tree_leaves(state.params["dense"]),
                       jax.tree_util.tree_leaves(fresh.params["dense"]), strict=True):
    np.testing.assert_array_equal(got, want)

  results = train.train_and_evaluate(config, str(tmp_path / "classifier"))
  assert np.isfinite(results["test_loss"])
  assert results["init_from"] == {"workdir": str(lm_workdir), "step": start.step}
  lm_words = json.loads((lm_workdir / workdir_lib.VOCABULARY).read_text())["words"]
  words = json.loads((tmp_path / "classifier" / workdir_lib.VOCABULARY).read_text())["words"]
  assert words == lm_words


@pytest.mark.parametrize("overrides, problem", [
    (dict(lstm_units=4), "lstm_units=4 (the language model has 8)"),
    (dict(bidirectional=False), "bidirectional=False (the language model has True)"),
    (dict(top_words=40), "top_words=40 (the language model has 30)"),
])
def test_classifier_that_does_not_fit_the_language_model_is_refused(
    tiny_data_dir, tmp_path, lm_workdir, overrides, problem):
  config = classifier_config(tiny_data_dir, tmp_path, init_from=str(lm_workdir), **overrides)
  with pytest.raises(ConfigError, match=re.escape(problem)):
    train.train_and_evaluate(config, str(tmp_path / "classifier"))
  assert not (tmp_path / "classifier").exists()


def test_init_from_a_classifier_or_a_missing_workdir_is_refused(tiny_data_dir, tmp_path):
  classifier = classifier_config(tiny_data_dir, tmp_path)
  train.train_and_evaluate(classifier, str(tmp_path / "classifier"))
  config = classifier_config(tiny_data_dir, tmp_path, init_from=str(tmp_path / "classifier"))
  with pytest.raises(ConfigError, match="task='classify'; a classifier starts only from a "
                                        "language model"):
    pretrained.load(config.init_from, config)
  with pytest.raises(DataError, match="does not exist"):
    pretrained.load(str(tmp_path / "nowhere"), config)


def test_language_model_workdir_cannot_predict_sentiment(lm_workdir):
  result = subprocess.run([sys.executable, "-m", "seqjax.predict", f"--workdir={lm_workdir}",
                           "Great."], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode != 0
  assert "holds a language model" in result.stderr and "init_from" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("overrides, problem", [
    (dict(lm_splits="train,test"), "config.lm_splits='train,test' is invalid: the evaluation"),
    (dict(lstm_layers=2), "config.bidirectional=True is invalid"),
    (dict(evaluate_test="best_epoch"), "config.evaluate_test='best_epoch' is invalid"),
    (dict(validation_size=0), "needs validation_size > 0"),
    (dict(padding="pre"), "config.padding='pre' is invalid"),
    (dict(adversarial_epsilon=0.1), "config.adversarial_epsilon=0.1 is invalid"),
    (dict(lm_sampled_words=30000), "config.lm_sampled_words=30000 is invalid"),
])
def test_bad_language_model_config_is_refused_naming_the_key(overrides, problem):
  config = load_config("language_model")
  config.update(overrides)
  with pytest.raises(ConfigError, match=re.escape(problem)):
    config_lib.validate(config)


def test_init_from_a_classifier_with_a_conv_front_end_is_refused():
  config = load_config("pretrained_bilstm")
  config.update(init_from="runs/lm", conv_filters=64)
  with pytest.raises(ConfigError, match="conv_filters=0"):
    config_lib.validate(config)
