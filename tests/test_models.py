"""The models: Keras' parameter counts, Keras' LSTM equations, direction and dropout."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from seqjax import models
from seqjax.tokenizer import OOV_ID

KERAS_PARAM_COUNTS = {
    "lstm": 213_301,
    "lstm_dropout": 213_301,
    "lstm_recurrent_dropout": 213_301,
    "bilstm": 266_601,
    "cnn_lstm": 216_405,
}


def init(model, inputs, seed=0):
  return model.init({"params": jax.random.PRNGKey(seed)}, inputs, train=False)["params"]


def keras_lstm_numpy(x, kernel, recurrent_kernel, bias, go_backwards=False, input_mask=1.0,
                     recurrent_mask=1.0):
  """Keras' LSTM in plain numpy: x (B, T, E) -> final h (B, H)."""
  sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))
  batch, steps, _ = x.shape
  units = recurrent_kernel.shape[0]
  h = np.zeros((batch, units))
  c = np.zeros((batch, units))
  for t in (reversed(range(steps)) if go_backwards else range(steps)):
    z = (x[:, t] * input_mask) @ kernel + (h * recurrent_mask) @ recurrent_kernel + bias
    i, f, g, o = (z[:, k * units:(k + 1) * units] for k in range(4))
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
  return h


@pytest.mark.parametrize("name", sorted(KERAS_PARAM_COUNTS))
def test_param_count_equals_keras(name):
  config = load_config(name)
  model = models.create_model(config)
  params = init(model, jnp.zeros((1, config.max_length), jnp.int32))
  assert models.count_params(params) == KERAS_PARAM_COUNTS[name]


def test_lstm_params_have_keras_shapes_and_initializers():
  params = init(models.LSTM(units=8), jnp.zeros((2, 5, 3)))
  assert params["kernel"].shape == (3, 32)
  assert params["recurrent_kernel"].shape == (8, 32)
  np.testing.assert_array_equal(params["bias"], np.r_[np.zeros(8), np.ones(8), np.zeros(16)])
  # Orthogonal recurrent kernel: its rows are orthonormal.
  u = np.asarray(params["recurrent_kernel"])
  np.testing.assert_allclose(u @ u.T, np.eye(8), atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_matches_numpy_keras_equations(reverse):
  x = np.random.default_rng(0).normal(size=(4, 7, 5)).astype(np.float32)
  model = models.LSTM(units=6, reverse=reverse)
  params = init(model, x)
  # A non-zero bias exercises every gate's bias slice.
  params["bias"] = jnp.asarray(np.random.default_rng(1).normal(size=24), jnp.float32)
  got = model.apply({"params": params}, x, train=False)
  want = keras_lstm_numpy(x, *(np.asarray(params[k], np.float64)
                               for k in ("kernel", "recurrent_kernel", "bias")),
                          go_backwards=reverse)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_backward_direction_reads_the_sequence_backwards():
  x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
  model = models.Bidirectional(units=4)
  params = init(model, x)
  out = model.apply({"params": params}, x, train=False)
  lstm = models.LSTM(units=4)
  forward = lstm.apply({"params": params["forward"]}, x, train=False)
  backward_on_flipped = lstm.apply({"params": params["backward"]}, x[:, ::-1], train=False)
  np.testing.assert_allclose(out[:, :4], forward, atol=1e-6)
  np.testing.assert_allclose(out[:, 4:], backward_on_flipped, atol=1e-6)
  # The backward half depends on the first step most directly: it is what it reads last.
  assert not np.allclose(out[:, 4:], lstm.apply({"params": params["backward"]}, x, train=False))


@pytest.mark.parametrize("name", ["lstm_dropout", "lstm_recurrent_dropout", "bilstm"])
def test_dropout_is_on_in_training_and_off_in_evaluation(name):
  config = load_config(name)
  config.max_length = 20
  model = models.create_model(config)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (8, 20), 0, config.top_words)
  params = init(model, tokens)

  def run(train, seed):
    return model.apply({"params": params}, tokens, train=train,
                       rngs={"dropout": jax.random.PRNGKey(seed)})

  np.testing.assert_array_equal(run(False, 1), run(False, 2))
  np.testing.assert_array_equal(run(False, 1), model.apply({"params": params}, tokens))
  assert not np.allclose(run(True, 1), run(True, 2))
  assert not np.allclose(run(True, 1), run(False, 1))


def test_word_dropout_zeroes_whole_words():
  model = models.Classifier(vocab_size=50, embedding_dim=8, lstm_units=4, word_dropout=0.5)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (16, 30), 1, 50)
  params = init(model, tokens)
  _, state = model.apply({"params": params}, tokens, train=True, capture_intermediates=True,
                         rngs={"dropout": jax.random.PRNGKey(1)})
  embedded = np.asarray(state["intermediates"]["embedding"]["__call__"][0])
  dropped = np.asarray(state["intermediates"]["word_dropout"]["__call__"][0])
  zeroed = np.all(dropped == 0, axis=-1)  # (16, 30): words zeroed in every feature...
  np.testing.assert_allclose(dropped[~zeroed], 2 * embedded[~zeroed], rtol=1e-6)  # ...or none.
  assert 0.35 < zeroed.mean() < 0.65


def test_lstm_dropout_masks_are_the_same_at_every_time_step():
  """Keras' LSTM dropout: one input mask and one recurrent mask per sequence, for all steps.

  With 2 input features and 2 units there are 4 x 4 possible mask pairs; every sequence's
  outputs must equal the numpy LSTM run with one fixed pair at all time steps.
  """
  x = np.random.default_rng(0).normal(size=(32, 6, 2)).astype(np.float32)
  model = models.LSTM(units=2, dropout=0.5, recurrent_dropout=0.5)
  params = init(model, x)
  weights = [np.asarray(params[k], np.float64) for k in ("kernel", "recurrent_kernel", "bias")]
  got = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  masks = [np.array(m, np.float64) * 2.0 for m in ((0, 0), (0, 1), (1, 0), (1, 1))]
  matched_pairs = set()
  for b in range(len(x)):
    matches = [(i, r) for i, input_mask in enumerate(masks) for r, recurrent_mask in
               enumerate(masks)
               if np.allclose(got[b], keras_lstm_numpy(x[b:b + 1], *weights, input_mask=input_mask,
                                                       recurrent_mask=recurrent_mask)[0],
                              atol=1e-5)]
    assert matches, f"sequence {b} matches no fixed pair of masks"
    matched_pairs.update(matches)
  assert len(matched_pairs) > 4  # The masks differ between sequences.


def test_conv_front_end_is_same_padded_relu_conv_then_max_pool():
  x = np.random.default_rng(0).normal(size=(2, 9, 3)).astype(np.float32)
  model = models.ConvFrontEnd(filters=4, kernel_size=3, pool_size=2)
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  out, mask = model.apply({"params": params}, x)
  assert mask is None
  kernel, bias = np.asarray(params["conv"]["kernel"]), np.asarray(params["conv"]["bias"])
  padded = np.pad(x, ((0, 0), (1, 1), (0, 0)))
  conv = np.stack([np.einsum("bkc,kcf->bf", padded[:, t:t + 3], kernel) for t in range(9)], 1)
  relu = np.maximum(conv + bias, 0)
  want = relu[:, :8].reshape(2, 4, 2, 4).max(axis=2)  # 'valid' pooling drops the 9th step.
  assert out.shape == (2, 4, 4)
  np.testing.assert_allclose(out, want, atol=1e-5)


def test_conv_front_end_parameters_and_outputs_are_nn_conv_s():
  """The parameters `nn.Conv` made, under the same names and initial values: checkpoints
  written before the front end applied them itself still load, to the same results."""

  class Before(nn.Module):  # The front end's conv as it was.
    @nn.compact
    def __call__(self, x):
      return nn.Conv(8, (3,), padding="SAME", kernel_init=models.glorot_uniform, name="conv")(x)

  x = np.random.default_rng(0).normal(size=(3, 11, 5)).astype(np.float32)
  front_end = models.ConvFrontEnd(filters=8, kernel_size=3, pool_size=1)
  theirs = Before().init(jax.random.PRNGKey(3), x)["params"]
  ours = front_end.init(jax.random.PRNGKey(3), x)["params"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, ours, theirs)
  np.testing.assert_array_equal(front_end.apply({"params": ours}, x)[0],
                                nn.relu(Before().apply({"params": theirs}, x)))


@pytest.mark.parametrize("size, steps", [(2, 9), (3, 10), (2, 1)])
def test_max_pool_over_time_equals_nn_max_pool_with_its_gradient(size, steps):
  x = np.random.default_rng(size).normal(size=(3, steps, 5)).astype(np.float32)
  x[0] = np.round(x[0])  # Ties: the first of them takes the gradient.
  x = jnp.asarray(x)
  weights = jnp.asarray(np.random.default_rng(7).normal(size=(3, steps // size, 5)))

  def loss(pool, x):
    return jnp.sum(pool(x) * weights)

  ours = functools.partial(models.max_pool_over_time, size=size)
  flax_pool = functools.partial(nn.max_pool, window_shape=(size,), strides=(size,),
                                padding="VALID")
  np.testing.assert_array_equal(ours(x), flax_pool(x))
  np.testing.assert_array_equal(jax.grad(loss, 1)(ours, x), jax.grad(loss, 1)(flax_pool, x))


BEYOND_TUTORIAL = {"lstm_layers": 2, "pooling": "max_mean", "ngram_order": 2,
                   "ngram_buckets": 6000}


@pytest.mark.parametrize("name, extra", [(name, {}) for name in sorted(KERAS_PARAM_COUNTS)]
                         + [("bilstm", BEYOND_TUTORIAL), ("cnn_lstm", BEYOND_TUTORIAL)])
def test_masked_result_does_not_depend_on_the_padding(name, extra):
  """A review gives the same logit alone as in a batch padded far beyond it (to 1e-5)."""
  config = load_config(name)
  config.update(mask_padding=True, padding="post", max_length=40, lstm_units=16, **extra)
  model = models.create_model(config)
  rng = np.random.default_rng(0)
  lengths = [7, 12, 19, 33]
  batch = np.zeros((len(lengths), 40), np.int32)
  for row, n in enumerate(lengths):
    batch[row, :n] = rng.integers(1, config.top_words, n)
  params = init(model, batch)
  together = model.apply({"params": params}, batch)
  for row, n in enumerate(lengths):
    alone = model.apply({"params": params}, batch[row:row + 1, :n])
    np.testing.assert_allclose(together[row], alone[0], atol=1e-5)
  # The same model without the mask does read the padding.
  unmasked = model.clone(mask_padding=False)
  assert not np.allclose(unmasked.apply({"params": params}, batch)[0],
                         unmasked.apply({"params": params}, batch[:1, :7])[0], atol=1e-5)


def test_masked_backward_lstm_starts_at_the_last_real_step():
  x = np.random.default_rng(0).normal(size=(1, 9, 3)).astype(np.float32)
  mask = np.array([[True] * 5 + [False] * 4])
  model = models.LSTM(units=4, reverse=True)
  params = init(model, x)
  masked = model.apply({"params": params}, x, mask, train=False)
  want = keras_lstm_numpy(x[:, :5], *(np.asarray(params[k], np.float64)
                                      for k in ("kernel", "recurrent_kernel", "bias")),
                          go_backwards=True)
  np.testing.assert_allclose(masked, want, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_lstm_backward_pass_equals_autodiff_of_its_forward(reverse, return_sequences, masked):
  """The hand-written backward pass of `lstm_recurrence`, with padding and recurrent dropout."""
  rng = np.random.default_rng(0)
  steps, batch, units = 9, 3, 4
  xw = rng.normal(size=(steps, batch, 4 * units)).astype(np.float32)
  recurrent_kernel = (0.5 * rng.normal(size=(units, 4 * units))).astype(np.float32)
  mask = rng.random((steps, batch)) > 0.3 if masked else None  # Holes anywhere, not only at ends.
  recurrent_mask = rng.choice([0.0, 2.0], size=(batch, units)).astype(np.float32)
  out_shape = (steps, batch, units) if return_sequences else (batch, units)
  weights = rng.normal(size=out_shape).astype(np.float32)

  def custom(xw, recurrent_kernel):
    return models.lstm_recurrence(xw, recurrent_kernel, mask, recurrent_mask, reverse,
                                  return_sequences)

  def autodiff(xw, recurrent_kernel):
    (_, h), hs = models.scan_lstm_cell("h", reverse, xw, recurrent_kernel, mask, recurrent_mask)
    return hs if return_sequences else h

  wants = jax.grad(lambda *a: jnp.sum(autodiff(*a) * weights), argnums=(0, 1))(xw, recurrent_kernel)
  gots = jax.grad(lambda *a: jnp.sum(custom(*a) * weights), argnums=(0, 1))(xw, recurrent_kernel)
  for want, got in zip(wants, gots, strict=True):
    assert np.abs(want).max() > 0.1  # Something flows back.
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_pooling_takes_max_and_mean_over_the_real_steps_only():
  states = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
  mask = np.array([[True] * 5, [True, True, False, False, False]])
  pooled = models.pool_over_time(jnp.asarray(states), jnp.asarray(mask), "max_mean")
  want = [np.r_[states[0].max(0), states[0].mean(0)], np.r_[states[1, :2].max(0),
                                                           states[1, :2].mean(0)]]
  np.testing.assert_allclose(pooled, want, atol=1e-6)
  np.testing.assert_allclose(models.pool_over_time(jnp.asarray(states), None, "max"),
                             states.max(1), atol=1e-6)


def test_stacked_layers_feed_every_state_upwards():
  config = load_config("bilstm")
  config.update(lstm_layers=2, max_length=12)
  model = models.create_model(config)
  params = init(model, jnp.zeros((1, 12), jnp.int32))
  # Layer 2 reads layer 1's 2H = 200 features of every step.
  assert params["bidirectional_1"]["forward"]["kernel"].shape == (200, 400)
  assert models.count_params(params) == KERAS_PARAM_COUNTS["bilstm"] + 2 * (200 + 100 + 1) * 400


def test_ngram_bag_is_the_mean_over_every_real_ngram_once():
  """With one-hot rows, the bag of [5 6 5 6] + padding is its n-gram histogram / 7."""
  tokens = np.array([[5, 6, 5, 6, 0, 0, 0]])
  bag = models.NgramBag(vocab_size=10, order=2, buckets=1000, dim=1000)
  params = {"embedding": {"embedding": jnp.eye(1000)}}
  counts = 7 * np.asarray(bag.apply({"params": params}, tokens))[0]
  np.testing.assert_allclose(counts[[5, 6]], [2, 2], atol=1e-5)  # Words have their own rows.
  # Bigrams "5 6" (twice) and "6 5" (once) hash to two shared rows; none touches the padding.
  np.testing.assert_allclose(sorted(counts[10:][counts[10:] > 0.5]), [1, 2], atol=1e-5)
  assert counts.sum() == pytest.approx(7, abs=1e-4)
  # Padding before the words gives the same bag.
  pre_padded = np.array([[0, 0, 0, 5, 6, 5, 6]])
  np.testing.assert_allclose(7 * bag.apply({"params": params}, pre_padded)[0], counts, atol=1e-5)


def test_ngram_bag_is_concatenated_with_the_pooled_states():
  config = load_config("bilstm")
  config.update(pooling="max", ngram_order=3, ngram_buckets=6000, ngram_dim=8, max_length=12)
  params = init(models.create_model(config), jnp.zeros((1, 12), jnp.int32))
  assert params["ngram_bag"]["embedding"]["embedding"].shape == (6000, 8)
  assert params["dense"]["kernel"].shape == (200 + 8, 1)


def bigram_row(first: int, second: int, vocab_size: int, buckets: int) -> int:
  """The shared row of a bigram, computed as NgramBag's hash defines it."""
  return vocab_size + ((first * models.NGRAM_HASH + second) % 2**32) % (buckets - vocab_size)


def test_naive_bayes_bag_sums_ratio_times_weight_over_distinct_ngrams():
  """[5 6 5 6] holds 5, 6, "5 6" and "6 5": each counts once, padding on either side none."""
  rng = np.random.default_rng(0)
  bag = models.NaiveBayesBag(vocab_size=10, order=2, buckets=1000)
  params = {models.LOG_COUNT_RATIO: jnp.asarray(rng.normal(size=1000), jnp.float32),
            "weight": jnp.asarray(rng.normal(size=1000), jnp.float32), "bias": jnp.float32(0.3)}
  rows = [5, 6, bigram_row(5, 6, 10, 1000), bigram_row(6, 5, 10, 1000)]
  want = sum(params[models.LOG_COUNT_RATIO][r] * params["weight"][r] for r in rows) + 0.3
  for tokens in ([[5, 6, 5, 6, 0, 0, 0]], [[0, 0, 5, 6, 5, 6]], [[5, 6, 5, 6]]):
    np.testing.assert_allclose(bag.apply({"params": params}, np.array(tokens)), [want],
                               rtol=1e-5)


def test_naive_bayes_ratios_are_smoothed_log_count_ratios_of_reviews():
  """Each review counts a word once; one review of each class is added to every row."""
  inputs = np.array([[3, 3, 4], [4, 5, 0], [3, 0, 0]])
  labels = np.array([1, 0, 1])
  ratios = models.naive_bayes_ratios(inputs, labels, vocab_size=8, order=1, buckets=8,
                                     batch_size=2)
  positive = np.ones(8) + np.eye(8)[3] * 2 + np.eye(8)[4]  # Sums to 11.
  negative = np.ones(8) + np.eye(8)[4] + np.eye(8)[5]  # Sums to 10.
  np.testing.assert_allclose(ratios, np.log((positive / 11) / (negative / 10)), rtol=1e-6)
  assert ratios[3] > 0 > ratios[5]


def test_bag_alone_has_no_embedding_and_adds_the_naive_bayes_logit_to_the_dense_one():
  config = load_config("bilstm")
  config.update(ngram_order=2, ngram_buckets=6000, ngram_bag="naive_bayes", max_length=12)
  hybrid = init(models.create_model(config), jnp.zeros((1, 12), jnp.int32))
  assert set(hybrid) == {"embedding", "bidirectional", "dense", "naive_bayes_bag"}
  # Its 2 x 6,000 bag rows add 6,001 trained parameters: the ratios are not trained.
  assert models.count_params(hybrid) == KERAS_PARAM_COUNTS["bilstm"] + 6001
  config.lstm_units = 0
  model = models.create_model(config)
  alone = init(model, jnp.zeros((1, 12), jnp.int32))
  assert set(alone) == {"naive_bayes_bag"}
  alone["naive_bayes_bag"]["bias"] = jnp.float32(1.5)
  np.testing.assert_allclose(model.apply({"params": alone}, jnp.ones((2, 12), jnp.int32)),
                             [1.5, 1.5])


def test_embedding_reads_words_beyond_embedding_top_words_as_out_of_vocabulary():
  config = load_config("lstm")
  config.update(top_words=50, embedding_top_words=10, max_length=4)
  model = models.create_model(config)
  params = init(model, jnp.zeros((1, 4), jnp.int32))
  assert models.embedding_table(params).shape == (10, config.embedding_dim)
  rare, oov = np.array([[1, 4, 12, 49]]), np.array([[1, 4, OOV_ID, OOV_ID]])
  np.testing.assert_array_equal(model.apply({"params": params}, rare),
                                model.apply({"params": params}, oov))
  assert not np.array_equal(model.apply({"params": params}, rare),
                            model.apply({"params": params}, np.array([[1, 4, 5, 6]])))
