"""Keras' LSTM through cuDNN on GPU (`jax.experimental.rnn`), with seqjax's parameters.

UNTESTED ON A GPU: no GPU was available where this was written. The tests check, on CPU, the
whole path with `jax.experimental.rnn.lstm_ref` (JAX's plain-JAX statement of what its cuDNN
call computes) in place of `jax.experimental.rnn.lstm`, against the nn.scan path.

Where JAX runs on a GPU, computes in float32 and the LSTM has no recurrent dropout (cuDNN has
no per-sequence mask on the state), `models.LSTM` runs here unless $SEQJAX_LSTM_KERNEL says
otherwise ('scan'); SEQJAX_LSTM_KERNEL=cudnn forces this path wherever there is no recurrent
dropout, also on CPU (with lstm_ref).
Keras' weights convert exactly: cuDNN's input and recurrent weights are Keras' kernel and
recurrent kernel transposed, its input bias is Keras' bias and its recurrent bias is zero; the
gates are in the same order (i, f, g, o). A mask must be right padding (the words first, as
`Classifier` gives it): it becomes cuDNN's sequence lengths.
"""

import jax
import jax.numpy as jnp
from jax.experimental import rnn

from seqjax import native_lstm

Array = jax.Array


def enabled(dtype, recurrent_dropout: bool) -> bool:
  """Whether `models.LSTM` runs through cuDNN; decided at trace time."""
  chosen = native_lstm.mode()
  if recurrent_dropout or not (chosen == "cudnn" or chosen == "auto"
                               and jax.default_backend() == "gpu"
                               and jnp.dtype(dtype) == jnp.float32):
    return False
  native_lstm.announce("LSTM: cuDNN (jax.experimental.rnn"
                       + (")." if jax.default_backend() == "gpu" else ".lstm_ref, off GPU)."))
  return True


def flat_weights(kernel: Array, recurrent_kernel: Array, bias: Array) -> Array:
  """Keras' kernel (E, 4H), recurrent_kernel (H, 4H) and bias (4H,) -> cuDNN's packed weights
  of a one-layer, one-direction LSTM (4H * (E + H + 2),)."""
  return jnp.concatenate([kernel.T.ravel(), recurrent_kernel.T.ravel(), bias,
                          jnp.zeros_like(bias)])


def _flip(x: Array, lengths: Array) -> Array:
  """(B, T, ...) -> each sequence's first `lengths` steps reversed, its padding left in place."""
  steps = jnp.arange(x.shape[1])[None, :]
  order = jnp.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
  return jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)


def _run(x: Array, weights: Array, lengths: Array, units: int) -> tuple[Array, Array]:
  """cuDNN's LSTM from a zero state on GPU, lstm_ref elsewhere: x (B, T, E) -> every step's
  h (B, T, H) (zero on padding) and the final h (B, H)."""
  batch, _, features = x.shape
  zeros = jnp.zeros((1, batch, units), x.dtype)
  if jax.default_backend() == "gpu":
    y, h, _ = rnn.lstm(x, zeros, zeros, weights, lengths, features, units, 1, 0.0, False,
                       precision=jax.lax.Precision.HIGHEST)  # float32 as Keras, not TF32.
  else:
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, features, units, 1, False)
    y, h, _ = rnn.lstm_ref(x, zeros, zeros, w_ih, w_hh, b_ih, b_hh, lengths, features, units,
                           1, 0.0, False)
  return y, h[0]


def lstm(inputs: Array, kernel: Array, recurrent_kernel: Array, bias: Array,
         mask: Array | None, reverse: bool, return_sequences: bool) -> Array:
  """What `models.LSTM` computes from its inputs (B, T, E) after dropout and mask (B, T): the
  final h (B, H), or every step's h (B, T, H) with return_sequences (on padding the state
  carried there: the last real step's forwards, zero backwards).

  The backward direction reads each sequence reversed within its length. Bidirectional layers
  run as two such calls rather than one cuDNN call with bidirectional=True, so that each
  direction keeps its own Keras parameters in its own module.
  """
  batch, steps, _ = inputs.shape
  units = recurrent_kernel.shape[0]
  lengths = (jnp.full((batch,), steps, jnp.int32) if mask is None
             else jnp.sum(mask, axis=1, dtype=jnp.int32))
  x = _flip(inputs, lengths) if reverse else inputs
  # An empty sequence runs one step, then is reset to the zero state it has.
  y, h = _run(x, flat_weights(kernel, recurrent_kernel, bias), jnp.maximum(lengths, 1), units)
  h = jnp.where(lengths[:, None] > 0, h, 0)
  if not return_sequences:
    return h
  real = (jnp.arange(steps)[None, :] < lengths[:, None])[..., None]
  if reverse:
    return jnp.where(real, _flip(y, lengths), 0)
  return jnp.where(real, y, h[:, None])
