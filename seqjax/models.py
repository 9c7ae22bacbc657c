"""Flax modules for the tutorial's five models, with Keras' parameterization and initializers.

Shapes: B = batch, T = time steps, E = embedding size, H = LSTM units, F = conv filters.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from seqjax.tokenizer import PAD_ID

Array = jax.Array

# Keras' defaults: glorot-uniform kernels, orthogonal recurrent kernel, uniform(-0.05, 0.05)
# embeddings, zero biases.
glorot_uniform = nn.initializers.glorot_uniform()
orthogonal = nn.initializers.orthogonal()
embedding_uniform = nn.initializers.uniform(scale=0.1)  # U[0, 0.1), shifted below.


def keras_embedding_init(key, shape, dtype=jnp.float32) -> Array:
  return embedding_uniform(key, shape, dtype) - 0.05


def lstm_bias_init(key, shape, dtype=jnp.float32) -> Array:
  """Zeros, with the forget gate's quarter at 1 (Keras' `unit_forget_bias=True`)."""
  del key
  units = shape[0] // 4
  return jnp.zeros(shape, dtype).at[units:2 * units].set(1.0)


def sequence_dropout_mask(module: nn.Module, rate: float, shape: tuple[int, ...],
                          deterministic: bool) -> Array | None:
  """One scaled keep-mask per sequence, reused at every time step (Keras' LSTM dropout)."""
  if deterministic or rate == 0.0:
    return None
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, shape)
  return keep.astype(jnp.float32) / (1.0 - rate)


class LSTMCell(nn.Module):
  """One time step of Keras' LSTM, given the input's projection for that step.

  carry: (c, h), each (B, H). xw_t: (B, 4H) = x_t @ kernel + bias. The gates are i, f, c, o
  in that order along the last axis, as in Keras. Where `step_mask` (B,) is False (padding),
  the state is carried over unchanged.
  """

  emit_outputs: bool = True  # False: only the final state is needed; stack no outputs.

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], xw_t: Array, step_mask: Array | None,
               recurrent_kernel: Array, recurrent_mask: Array | None
               ) -> tuple[tuple[Array, Array], Array | None]:
    c_prev, h_prev = carry
    h = h_prev if recurrent_mask is None else h_prev * recurrent_mask
    z = xw_t + h @ recurrent_kernel
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = nn.sigmoid(f) * c_prev + nn.sigmoid(i) * jnp.tanh(g)
    h = nn.sigmoid(o) * jnp.tanh(c)
    if step_mask is not None:
      keep = step_mask[:, None]
      c, h = jnp.where(keep, c, c_prev), jnp.where(keep, h, h_prev)
    return (c, h), h if self.emit_outputs else None


class LSTM(nn.Module):
  """Keras' `LSTM(units, dropout, recurrent_dropout)` over a whole sequence.

  Parameters: kernel (E, 4H), recurrent_kernel (H, 4H), bias (4H,). The input projection of
  all T steps is one matmul; only the recurrent part is scanned over time with `nn.scan`.
  Input (B, T, E) -> final state h (B, H), or all states (B, T, H) with return_sequences.
  `reverse=True` reads the sequence from its last step to its first (Keras' go_backwards).
  `mask` (B, T), True on real steps: padded steps leave the state unchanged, so the result
  does not depend on how much padding there is.
  """

  units: int
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  reverse: bool = False
  return_sequences: bool = False
  dtype: Any = jnp.float32  # Of the computation; parameters stay float32.

  @nn.compact
  def __call__(self, inputs: Array, mask: Array | None = None, *, train: bool) -> Array:
    batch, _, features = inputs.shape
    kernel = self.param("kernel", glorot_uniform, (features, 4 * self.units))
    recurrent_kernel = self.param("recurrent_kernel", orthogonal, (self.units, 4 * self.units))
    bias = self.param("bias", lstm_bias_init, (4 * self.units,))

    inputs = inputs.astype(self.dtype)
    input_mask = sequence_dropout_mask(self, self.dropout, (batch, 1, features), not train)
    if input_mask is not None:
      inputs = inputs * input_mask.astype(self.dtype)
    recurrent_mask = sequence_dropout_mask(self, self.recurrent_dropout, (batch, self.units),
                                           not train)
    if recurrent_mask is not None:
      recurrent_mask = recurrent_mask.astype(self.dtype)
    xw = inputs @ kernel.astype(self.dtype) + bias.astype(self.dtype)  # (B, T, 4H)

    scan = nn.scan(LSTMCell, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=(1, 1, nn.broadcast, nn.broadcast), out_axes=1, reverse=self.reverse)
    zeros = jnp.zeros((batch, self.units), xw.dtype)
    cell = scan(emit_outputs=self.return_sequences, name="cell")
    (_, h), outputs = cell((zeros, zeros), xw, mask, recurrent_kernel.astype(self.dtype),
                           recurrent_mask)
    return outputs if self.return_sequences else h


class Bidirectional(nn.Module):
  """Keras' `Bidirectional(LSTM(...))`: separate forward and backward LSTMs.

  Input (B, T, E) and optional mask (B, T) -> concatenated final states [forward, backward]
  (B, 2H). With a mask, the backward LSTM starts at each sequence's last real step.
  """

  units: int
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, mask: Array | None = None, *, train: bool) -> Array:
    kwargs = dict(units=self.units, dropout=self.dropout, recurrent_dropout=self.recurrent_dropout,
                  dtype=self.dtype)
    forward = LSTM(**kwargs, name="forward")(inputs, mask, train=train)
    backward = LSTM(**kwargs, reverse=True, name="backward")(inputs, mask, train=train)
    return jnp.concatenate([forward, backward], axis=-1)


class ConvFrontEnd(nn.Module):
  """Conv1D(filters, kernel_size, padding='same', relu) then MaxPooling1D(pool_size).

  Input (B, T, E) -> (B, T // pool_size, F). With a mask (B, T) (real steps first, padding
  after), padded inputs count as zeros, as at the end of an unpadded sequence, and a pooled
  step is real only if its whole window is: the output's real steps are those of the same
  sequence run alone, and the returned mask (B, T // pool_size) marks them.
  """

  filters: int
  kernel_size: int
  pool_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, mask: Array | None = None) -> tuple[Array, Array | None]:
    if mask is not None:
      inputs = inputs * mask[..., None]
    x = nn.Conv(self.filters, (self.kernel_size,), padding="SAME", kernel_init=glorot_uniform,
                dtype=self.dtype, name="conv")(inputs)
    x = nn.relu(x)
    window = dict(window_shape=(self.pool_size,), strides=(self.pool_size,), padding="VALID")
    x = nn.max_pool(x, **window)
    if mask is not None:
      mask = -nn.max_pool(-mask[..., None].astype(x.dtype), **window)[..., 0] > 0
    return x, mask


class Classifier(nn.Module):
  """Embedding -> [Dropout] -> [ConvFrontEnd] -> LSTM or Bidirectional -> [Dropout] -> Dense(1).

  Input token ids (B, T) int -> one logit per example (B,); sigmoid(logit) is P(positive).
  With `mask_padding`, the ids must be padded after the words ('post'): then a review's logit
  does not depend on the padding, so batches can be cut to their longest review.
  """

  vocab_size: int
  embedding_dim: int
  lstm_units: int
  bidirectional: bool = False
  embedding_dropout: float = 0.0
  conv_filters: int = 0
  conv_kernel_size: int = 3
  pool_size: int = 2
  lstm_dropout: float = 0.0
  lstm_recurrent_dropout: float = 0.0
  output_dropout: float = 0.0
  # Padding (id 0, after the words) leaves the LSTM state unchanged; see `LSTM`.
  mask_padding: bool = False
  # bfloat16 computes faster on accelerators; parameters and the optimizer stay float32.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, *, train: bool = False) -> Array:
    mask = tokens != PAD_ID if self.mask_padding else None
    x = nn.Embed(self.vocab_size, self.embedding_dim, embedding_init=keras_embedding_init,
                 dtype=self.dtype, name="embedding")(tokens)
    if self.embedding_dropout:
      x = nn.Dropout(self.embedding_dropout, deterministic=not train,
                     name="embedding_dropout")(x)
    if self.conv_filters:
      x, mask = ConvFrontEnd(self.conv_filters, self.conv_kernel_size, self.pool_size,
                             dtype=self.dtype, name="conv_front_end")(x, mask)
    rnn = Bidirectional if self.bidirectional else LSTM
    x = rnn(self.lstm_units, dropout=self.lstm_dropout,
            recurrent_dropout=self.lstm_recurrent_dropout, dtype=self.dtype,
            name="bidirectional" if self.bidirectional else "lstm")(x, mask, train=train)
    if self.output_dropout:
      x = nn.Dropout(self.output_dropout, deterministic=not train, name="output_dropout")(x)
    logits = nn.Dense(1, kernel_init=glorot_uniform, dtype=self.dtype, name="dense")(x)
    return logits[:, 0].astype(jnp.float32)


def create_model(config: ml_collections.ConfigDict) -> Classifier:
  """The classifier a config describes."""
  return Classifier(
      vocab_size=config.top_words,
      embedding_dim=config.embedding_dim,
      lstm_units=config.lstm_units,
      bidirectional=config.bidirectional,
      embedding_dropout=config.embedding_dropout,
      conv_filters=config.conv_filters,
      conv_kernel_size=config.conv_kernel_size,
      pool_size=config.pool_size,
      lstm_dropout=config.lstm_dropout,
      lstm_recurrent_dropout=config.lstm_recurrent_dropout,
      output_dropout=config.output_dropout,
      mask_padding=config.mask_padding,
      dtype=jnp.dtype(config.compute_dtype),
  )


def count_params(params: Any) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
