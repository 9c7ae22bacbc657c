"""Keras' Adam (optimizers.keras_adam) against its equations computed by hand, and its keys."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, tiny_overrides
from seqjax import config as config_lib
from seqjax import optimizers, train
from seqjax.errors import ConfigError

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-7


def keras_adam_numpy(grads: list[np.ndarray], squares: list[np.ndarray] | None = None
                     ) -> np.ndarray:
  """The sum of Keras' Adam steps for successive gradients, in float64."""
  m = v = total = 0.0
  for t, g in enumerate(grads, start=1):
    m = m + (g - m) * (1 - B1)
    v = v + ((g * g if squares is None else squares[t - 1]) - v) * (1 - B2)
    total = total - LR * np.sqrt(1 - B2**t) / (1 - B1**t) * m / (np.sqrt(v) + EPS)
  return total


def run(optimizer, grads, squares=None):
  params = {"w": jnp.zeros_like(grads[0])}
  state, total = optimizer.init(params), 0.0
  for i, g in enumerate(grads):
    extra = {} if squares is None else {"squared_grads": {"w": squares[i]}}
    updates, state = optimizer.update({"w": g}, state, params, **extra)
    total = total + updates["w"]
  return np.asarray(total)


def test_first_three_steps_equal_keras_equations():
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=(5,)).astype(np.float32) * 10.0**-k for k in range(3)]
  got = run(optimizers.keras_adam(LR, eps=EPS), [jnp.asarray(g) for g in grads])
  np.testing.assert_allclose(got, keras_adam_numpy([g.astype(np.float64) for g in grads]),
                             rtol=1e-5)


def test_epsilon_is_added_to_the_uncorrected_root_unlike_optax():
  """A first gradient equal to epsilon: optax moves half the rate, Keras
  sqrt(1 - b2) / (sqrt(1 - b2) + 1) = 3.07% of it (its epsilon is 32 times larger)."""
  grads = [jnp.full((1,), EPS)]
  keras = run(optimizers.keras_adam(LR, eps=EPS), grads)
  optax_adam = run(train.create_optimizer(config_lib.base_config()), grads)
  np.testing.assert_allclose(keras, -LR * np.sqrt(1 - B2) / (np.sqrt(1 - B2) + 1), rtol=1e-4)
  np.testing.assert_allclose(optax_adam, -0.5 * LR, rtol=1e-4)


def test_squared_grads_replace_the_squares_in_the_second_moment():
  """A word seen twice with gradient 1: the summed gradient is 2; with the per-occurrence
  squares 1 + 1 in v it moves sqrt(2) times the rate on the first step, not the rate."""
  grads, squares = [jnp.full((1,), 2.0)], [jnp.full((1,), 2.0)]
  np.testing.assert_allclose(run(optimizers.keras_adam(LR), grads), -LR, rtol=1e-4)
  np.testing.assert_allclose(run(optimizers.keras_adam(LR), grads, squares),
                             -np.sqrt(2) * LR, rtol=1e-4)


def test_embedding_squares_sum_each_occurrences_square_per_row():
  grad = jnp.asarray([[[1.0, 2.0], [3.0, -1.0]], [[-2.0, 0.5], [1.0, 1.0]]])  # (B=2, T=2, E=2)
  ids = jnp.asarray([[3, 1], [3, 0]])
  got = optimizers.embedding_squares(grad, ids, rows=5)
  want = np.zeros((5, 2))
  want[3] = [1 + 4, 4 + 0.25]
  want[1] = [9, 1]
  want[0] = [1, 1]
  np.testing.assert_allclose(got, want)


def test_a_schedule_is_read_before_the_step():
  seen = []
  optimizer = optimizers.keras_adam(lambda count: seen.append(count) or LR)
  run(optimizer, [jnp.ones((1,))])
  assert int(seen[0]) == 0


def test_tutorial_configs_use_keras_adam_with_summed_squares():
  for name in ("lstm", "lstm_dropout", "lstm_recurrent_dropout", "bilstm", "cnn_lstm",
               "bilstm_bucketed"):
    config = load_config(name)
    assert config.optimizer == "keras_adam"
    assert not config.keras3_embedding_squares
  assert config_lib.base_config().optimizer == "adam"


@pytest.mark.parametrize("changes, message", [
    ({"optimizer": "sgd"}, r"config.optimizer='sgd' is invalid: use one of 'adam', 'keras_adam'"),
    ({"keras3_embedding_squares": True}, r"set optimizer='keras_adam'"),
    ({"optimizer": "keras_adam", "weight_decay": 0.1}, r"needs optimizer='adam'"),
    ({"optimizer": "keras_adam", "keras3_embedding_squares": True, "gradient_clip_norm": 1.0},
     r"not implemented with gradient_clip_norm=1.0"),
])
def test_bad_optimizer_keys_are_named(changes, message):
  config = config_lib.base_config()
  config.update(changes)
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)


def test_a_run_with_keras3_embedding_squares_trains_and_differs_from_summed_squares(
    tiny_data_dir, tmp_path):
  results = {}
  for squares in (False, True):
    config = load_config("lstm")
    config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"), num_epochs=1,
                  log_every_steps=1000, keras3_embedding_squares=squares)
    results[squares] = train.train_and_evaluate(config, str(tmp_path / str(squares)))
  assert np.isfinite(results[True]["test_loss"])
  assert results[True]["epochs"][0]["train_loss"] != results[False]["epochs"][0]["train_loss"]
