"""The cuDNN path's conversion of Keras' LSTM, checked on CPU with jax.experimental.rnn.lstm_ref
(the GPU itself is untested here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from seqjax import cudnn_lstm, models, native_lstm
from test_models import keras_lstm_numpy


def test_keras_weights_convert_to_cudnn_layout():
  rng = np.random.default_rng(0)
  batch, steps, features, units = 3, 6, 5, 7
  x = rng.normal(size=(batch, steps, features)).astype(np.float32)
  kernel, recurrent_kernel = (rng.normal(size=(n, 4 * units)).astype(np.float32) / 2
                              for n in (features, units))
  bias = rng.normal(size=4 * units).astype(np.float32)  # Every gate's slice differs.
  weights = cudnn_lstm.flat_weights(kernel, recurrent_kernel, bias)
  assert weights.size == rnn.get_num_params_in_lstm(features, units, 1, False)
  unpacked = rnn.unpack_lstm_weights(weights, features, units, 1, False)
  zeros = jnp.zeros((1, batch, units))
  _, h, _ = rnn.lstm_ref(x, zeros, zeros, *unpacked, jnp.full((batch,), steps, jnp.int32),
                         features, units, 1, 0.0, False)
  np.testing.assert_allclose(h[0], keras_lstm_numpy(x, kernel, recurrent_kernel, bias),
                             atol=1e-5)


def test_only_gpu_float32_without_recurrent_dropout_takes_cudnn_under_auto(monkeypatch):
  monkeypatch.setenv(native_lstm.KERNEL_ENV, "auto")
  assert not cudnn_lstm.enabled(jnp.float32, recurrent_dropout=False)  # CPU.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert cudnn_lstm.enabled(jnp.float32, recurrent_dropout=False)
  assert not cudnn_lstm.enabled(jnp.float32, recurrent_dropout=True)
  assert not cudnn_lstm.enabled(jnp.bfloat16, recurrent_dropout=False)
  monkeypatch.setenv(native_lstm.KERNEL_ENV, "scan")
  assert not cudnn_lstm.enabled(jnp.float32, recurrent_dropout=False)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_cudnn_path_equals_the_scan_path(monkeypatch, bidirectional, return_sequences):
  """models.LSTM / Bidirectional with right padding (an empty row too) and input dropout:
  outputs, padding included, and gradients to every parameter and the inputs."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 9, 5)).astype(np.float32)
  mask = np.arange(9)[None, :] < np.array([9, 3, 0, 7, 1, 9])[:, None]
  layer = (models.Bidirectional if bidirectional else models.LSTM)(
      units=11, dropout=0.3, return_sequences=return_sequences)
  params = layer.init(jax.random.PRNGKey(0), x, mask, train=False)["params"]
  weights = rng.normal(size=layer.apply({"params": params}, x, mask, train=False).shape)

  def run(path):
    monkeypatch.setenv(native_lstm.KERNEL_ENV, path)

    def loss(params, x):
      out = layer.apply({"params": params}, x, mask, train=True,
                        rngs={"dropout": jax.random.PRNGKey(2)})
      return jnp.sum(out * weights), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return out, grads

  calls = []
  run_cudnn = cudnn_lstm._run
  monkeypatch.setattr(cudnn_lstm, "_run", lambda *a: calls.append(1) or run_cudnn(*a))
  out, grads = run("cudnn")
  assert len(calls) == (2 if bidirectional else 1)  # One per direction: it took the path.
  want_out, want_grads = run("scan")
  assert len(calls) == (2 if bidirectional else 1)
  np.testing.assert_allclose(out, want_out, atol=1e-5)
  for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want_grads),
                       strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5)
