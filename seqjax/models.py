"""Flax modules for the tutorial's five models, with Keras' parameterization and initializers.

Shapes: B = batch, T = time steps, E = embedding size, H = LSTM units, F = conv filters.
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqjax import cudnn_lstm, native_lstm
from seqjax.tokenizer import OOV_ID, PAD_ID

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


def gate_scale(units: int, dtype: Any = jnp.float32) -> Array:
  """(4H,): 0.5 for the sigmoid gates i, f, o and 1 for the candidate g.

  sigmoid(z) = 0.5 * tanh(z / 2) + 0.5, so once the pre-activations are scaled by this vector,
  a single tanh over all 4H columns gives every gate. On CPU that is much faster than
  activating each H-wide slice on its own (H = 100 puts the slices off the SIMD lanes). The
  scale is folded into the kernels, so it costs nothing per step.
  """
  half = jnp.full((units,), 0.5, dtype)
  return jnp.concatenate([half, half, jnp.ones((units,), dtype), half])


def gate_activations(gate_tanh: Array) -> Array:
  """(B, 4H) tanh of the scaled pre-activations -> the gates i, f, g, o (B, 4H)."""
  scale = gate_scale(gate_tanh.shape[-1] // 4, gate_tanh.dtype)
  return gate_tanh * scale + (1 - scale)


class LSTMCell(nn.Module):
  """One time step of Keras' LSTM, given the input's projection for that step.

  carry: (c, h), each (B, H). xw_t: (B, 4H) = (x_t @ kernel + bias) * gate_scale, and
  recurrent_kernel (H, 4H) is scaled by `gate_scale` too. The gates are i, f, c, o in that
  order along the last axis, as in Keras. Where `step_mask` (B,) is False (padding), the state
  is carried over unchanged. Each step outputs, by `emit`: nothing; "h", the new h (B, H); or
  "residuals", (gate tanh (B, 4H), c, h), what `lstm_recurrence`'s backward pass reads.
  """

  emit: str | None = None

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], xw_t: Array, step_mask: Array | None,
               recurrent_kernel: Array, recurrent_mask: Array | None
               ) -> tuple[tuple[Array, Array], Any]:
    c_prev, h_prev = carry
    h = h_prev if recurrent_mask is None else h_prev * recurrent_mask
    gate_tanh = jnp.tanh(xw_t + h @ recurrent_kernel)
    i, f, g, o = jnp.split(gate_activations(gate_tanh), 4, axis=-1)
    c = f * c_prev + i * g
    h = o * jnp.tanh(c)
    if step_mask is not None:
      keep = step_mask[:, None]
      c, h = jnp.where(keep, c, c_prev), jnp.where(keep, h, h_prev)
    outputs = {None: None, "h": h, "residuals": (gate_tanh, c, h)}[self.emit]
    return (c, h), outputs


def scan_lstm_cell(emit: str | None, reverse: bool, xw: Array, recurrent_kernel: Array,
                   mask: Array | None, recurrent_mask: Array | None):
  """`LSTMCell` over the time-major xw (T, B, 4H) from a zero state, with `nn.scan`."""
  scan = nn.scan(LSTMCell, variable_broadcast="params", split_rngs={"params": False},
                 in_axes=(0, 0, nn.broadcast, nn.broadcast), out_axes=0, reverse=reverse)
  zeros = jnp.zeros(xw.shape[1:-1] + recurrent_kernel.shape[:1], xw.dtype)
  return scan(emit=emit).apply({}, (zeros, zeros), xw, mask, recurrent_kernel, recurrent_mask)


def lstm_recurrence(xw: Array, recurrent_kernel: Array, mask: Array | None,
                    recurrent_mask: Array | None, reverse: bool, return_sequences: bool) -> Array:
  """The scanned part of the LSTM, with a hand-written backward pass.

  xw (T, B, 4H) and recurrent_kernel (H, 4H), both scaled by `gate_scale`; mask (T, B) bool;
  recurrent_mask (B, H), the recurrent dropout's scaled keep-mask. Returns the final h (B, H),
  or every step's h (T, B, H) with return_sequences.

  Autodiff of the scan accumulates the recurrent kernel's gradient inside the backward loop,
  one small matmul per step; this backward loop carries only (dh, dc), and the kernel's
  gradient is one large matmul after it.

  On CPU in float32 both passes run in the native kernel (native_lstm.cc, one call per
  pass) unless $SEQJAX_LSTM_KERNEL says otherwise; elsewhere they scan `LSTMCell`.
  """
  return _lstm_recurrence(xw, recurrent_kernel, mask, recurrent_mask, reverse,
                          return_sequences, native_lstm.enabled(xw.dtype))


# `native` is an argument, not read inside, so that JAX's caches of traced functions key on it.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _lstm_recurrence(xw, recurrent_kernel, mask, recurrent_mask, reverse, return_sequences,
                     native):
  if native:
    h, hs, _, _ = native_lstm.forward(xw, recurrent_kernel, mask, recurrent_mask, reverse,
                                      sequences=return_sequences, residuals=False)
    return hs if return_sequences else h
  (_, h), hs = scan_lstm_cell("h" if return_sequences else None, reverse, xw,
                              recurrent_kernel, mask, recurrent_mask)
  return hs if return_sequences else h


def _lstm_recurrence_fwd(xw, recurrent_kernel, mask, recurrent_mask, reverse, return_sequences,
                         native):
  if native:
    h, hs, cs, gate_tanh = native_lstm.forward(xw, recurrent_kernel, mask, recurrent_mask,
                                               reverse, sequences=True, residuals=True)
    residuals = gate_tanh, cs, hs
  else:
    (_, h), residuals = scan_lstm_cell("residuals", reverse, xw, recurrent_kernel, mask,
                                       recurrent_mask)
    hs = residuals[2]
  return hs if return_sequences else h, (residuals, recurrent_kernel, mask, recurrent_mask)


def _lstm_recurrence_bwd(reverse, return_sequences, native, saved, grad):
  (gate_tanh, cs, hs), recurrent_kernel, mask, recurrent_mask = saved
  if native:
    dxw = native_lstm.backward(gate_tanh, cs, recurrent_kernel, mask, recurrent_mask, grad,
                               reverse, return_sequences)
    return dxw, recurrent_kernel_gradient(hs, dxw, recurrent_mask, reverse), None, None
  c_before = state_before(cs, reverse)
  scale = gate_scale(cs.shape[-1], cs.dtype)
  recurrent_kernel_t = recurrent_kernel.T  # Transposed once, not read across at every step.

  def step(carry, xs):
    dh, dc = carry
    gate_tanh_t, c, c_prev, step_mask, dh_output = xs
    if dh_output is not None:
      dh = dh + dh_output
    i, f, g, o = jnp.split(gate_activations(gate_tanh_t), 4, axis=-1)
    tanh_c = jnp.tanh(c)
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
    d_gates = jnp.concatenate([dc_total * g, dc_total * c_prev, dc_total * i, dh * tanh_c], -1)
    dz = d_gates * scale * (1 - gate_tanh_t * gate_tanh_t)
    dh_prev = dz @ recurrent_kernel_t
    if recurrent_mask is not None:
      dh_prev = dh_prev * recurrent_mask
    dc_prev = dc_total * f
    if step_mask is not None:
      keep = step_mask[:, None]
      dz = jnp.where(keep, dz, 0)
      dh_prev, dc_prev = jnp.where(keep, dh_prev, dh), jnp.where(keep, dc_prev, dc)
    return (dh_prev, dc_prev), dz

  dh_final = jnp.zeros_like(cs[0]) if return_sequences else grad
  _, dxw = jax.lax.scan(step, (dh_final, jnp.zeros_like(dh_final)),
                        (gate_tanh, cs, c_before, mask, grad if return_sequences else None),
                        reverse=not reverse)
  return dxw, recurrent_kernel_gradient(hs, dxw, recurrent_mask, reverse), None, None


def state_before(states: Array, reverse: bool) -> Array:
  """The state (T, B, H) each step started from, in time order: the previous step's, or the
  next one's when the recurrence ran backwards; zeros for the first."""
  zeros = jnp.zeros_like(states[:1])
  return (jnp.concatenate([states[1:], zeros]) if reverse
          else jnp.concatenate([zeros, states[:-1]]))


def recurrent_kernel_gradient(hs: Array, dxw: Array, recurrent_mask: Array | None,
                              reverse: bool) -> Array:
  """d recurrent_kernel (H, 4H) from every step's h (T, B, H) and d xw (T, B, 4H): one large
  matmul over all steps, after the backward loop rather than a small one inside it."""
  h_before = state_before(hs, reverse)
  if recurrent_mask is not None:
    h_before = h_before * recurrent_mask
  units = hs.shape[-1]
  return h_before.reshape(-1, units).T @ dxw.reshape(-1, 4 * units)


_lstm_recurrence.defvjp(_lstm_recurrence_fwd, _lstm_recurrence_bwd)


def lstm_layer(inputs: Array, kernel: Array, bias: Array, recurrent_kernel: Array,
               mask: Array | None, recurrent_mask: Array | None, reverse: bool,
               return_sequences: bool, ids: Array | None = None) -> Array:
  """`lstm_recurrence` of xw = inputs (T, B, E) @ kernel (E, 4H) + bias (4H,), all scaled by
  `gate_scale` like recurrent_kernel (H, 4H). Given ids (T, B), inputs is an embedding table
  (V, E) and x_t = inputs[ids[t]].

  The native kernel computes xw itself, one step at a time, and the gradients of the inputs
  and the weights in its backward pass: neither pass writes a (T, B, 4H) array of every step's
  projection or its gradient, the layer's largest. Given ids, it projects the table once
  instead of every token (a quarter of an H = 100, E = 32 layer's forward multiply-adds where
  the batch holds many more tokens than the table has rows), with the same bits. On the
  `nn.scan` path the weights' gradients are large matmuls over all steps.
  """
  native = native_lstm.enabled(kernel.dtype)
  if ids is not None and not native:
    inputs, ids = jnp.take(inputs, ids, axis=0), None
  if native:
    return _projected_native_recurrence(inputs, ids, kernel, bias, recurrent_kernel, mask,
                                        recurrent_mask, reverse, return_sequences)
  return lstm_recurrence(inputs @ kernel + bias, recurrent_kernel, mask, recurrent_mask,
                         reverse, return_sequences)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _projected_native_recurrence(inputs, ids, kernel, bias, recurrent_kernel, mask,
                                 recurrent_mask, reverse, return_sequences):
  h, hs, _, _ = native_lstm.forward(None, recurrent_kernel, mask, recurrent_mask, reverse,
                                    sequences=return_sequences, residuals=False,
                                    projection=(inputs, kernel, bias), ids=ids)
  return hs if return_sequences else h


def _projected_native_fwd(inputs, ids, kernel, bias, recurrent_kernel, mask, recurrent_mask,
                          reverse, return_sequences):
  h, hs, cs, gate_tanh = native_lstm.forward(None, recurrent_kernel, mask, recurrent_mask,
                                             reverse, sequences=True, residuals=True,
                                             projection=(inputs, kernel, bias), ids=ids)
  saved = ((gate_tanh, cs, hs), recurrent_kernel, mask, recurrent_mask), inputs, ids, kernel
  return hs if return_sequences else h, saved


def _projected_native_bwd(reverse, return_sequences, saved, grad):
  ((gate_tanh, cs, hs), recurrent_kernel, mask, recurrent_mask), inputs, ids, kernel = saved
  d_inputs, d_kernel, d_recurrent_kernel, d_bias = native_lstm.backward_projected(
      gate_tanh, cs, hs, recurrent_kernel, mask, recurrent_mask, grad, reverse,
      return_sequences, inputs, kernel, ids)
  return d_inputs, None, d_kernel, d_bias, d_recurrent_kernel, None, None


_projected_native_recurrence.defvjp(_projected_native_fwd, _projected_native_bwd)


class Embedded(NamedTuple):
  """Embedded ids not yet looked up: table (V, E) and ids (B, T) stand for table[ids]
  (B, T, E), which an LSTM reading them may compute more cheaply (`lstm_layer`)."""

  table: Array
  ids: Array

  @property
  def shape(self) -> tuple[int, int, int]:
    return self.ids.shape + self.table.shape[-1:]

  def gather(self) -> Array:
    return jnp.take(self.table, self.ids, axis=0)


class LSTM(nn.Module):
  """Keras' `LSTM(units, dropout, recurrent_dropout)` over a whole sequence.

  Parameters: kernel (E, 4H), recurrent_kernel (H, 4H), bias (4H,). The input projection of
  all T steps is one matmul; only the recurrent part is scanned over time (`lstm_recurrence`),
  or on CPU both run in the native kernel (`lstm_layer`), or on GPU in cuDNN (`cudnn_lstm`).
  Input (B, T, E), or `Embedded` ids (B, T) -> final state h (B, H), or all states (B, T, H)
  with return_sequences.
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
  def __call__(self, inputs: Array | Embedded, mask: Array | None = None, *,
               train: bool) -> Array:
    embedded = inputs if isinstance(inputs, Embedded) else None
    batch, _, features = inputs.shape
    kernel = self.param("kernel", glorot_uniform, (features, 4 * self.units))
    recurrent_kernel = self.param("recurrent_kernel", orthogonal, (self.units, 4 * self.units))
    bias = self.param("bias", lstm_bias_init, (4 * self.units,))

    input_mask = sequence_dropout_mask(self, self.dropout, (1, batch, features), not train)
    recurrent_mask = sequence_dropout_mask(self, self.recurrent_dropout, (batch, self.units),
                                           not train)
    if recurrent_mask is not None:
      recurrent_mask = recurrent_mask.astype(self.dtype)
    cudnn = cudnn_lstm.enabled(self.dtype, recurrent_mask is not None)
    ids = None
    if embedded and input_mask is None and not cudnn:
      inputs, ids = embedded.table.astype(self.dtype), embedded.ids.T  # Time-major ids.
    else:
      # Time-major from here on: each step reads one contiguous (B, .) block.
      inputs = jnp.swapaxes(embedded.gather() if embedded else inputs, 0, 1).astype(self.dtype)
      if input_mask is not None:
        inputs = inputs * input_mask.astype(self.dtype)
    if cudnn:
      return cudnn_lstm.lstm(jnp.swapaxes(inputs, 0, 1), kernel, recurrent_kernel, bias, mask,
                             self.reverse, self.return_sequences)
    scale = gate_scale(self.units)
    outputs = lstm_layer(inputs, (kernel * scale).astype(self.dtype),
                         (bias * scale).astype(self.dtype),
                         (recurrent_kernel * scale).astype(self.dtype),
                         None if mask is None else mask.T, recurrent_mask, self.reverse,
                         self.return_sequences, ids)
    return jnp.swapaxes(outputs, 0, 1) if self.return_sequences else outputs


class Bidirectional(nn.Module):
  """Keras' `Bidirectional(LSTM(...))`: separate forward and backward LSTMs.

  Input (B, T, E) and optional mask (B, T) -> concatenated final states [forward, backward]
  (B, 2H), or with return_sequences both directions' states at every step (B, T, 2H). With a
  mask, the backward LSTM starts at each sequence's last real step.
  """

  units: int
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  return_sequences: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, mask: Array | None = None, *, train: bool) -> Array:
    kwargs = dict(units=self.units, dropout=self.dropout, recurrent_dropout=self.recurrent_dropout,
                  return_sequences=self.return_sequences, dtype=self.dtype)
    forward = LSTM(**kwargs, name="forward")(inputs, mask, train=train)
    backward = LSTM(**kwargs, reverse=True, name="backward")(inputs, mask, train=train)
    return jnp.concatenate([forward, backward], axis=-1)


class ConvWeights(nn.Module):
  """The parameters of `nn.Conv(filters, (kernel_size,))`, under its names and initializers:
  kernel (K, E, F) and bias (F,). `ConvFrontEnd` applies them itself."""

  filters: int
  kernel_size: int

  @nn.compact
  def __call__(self, features: int) -> tuple[Array, Array]:
    kernel = self.param("kernel", glorot_uniform, (self.kernel_size, features, self.filters),
                        jnp.float32)
    return kernel, self.param("bias", nn.initializers.zeros_init(), (self.filters,), jnp.float32)


class ConvFrontEnd(nn.Module):
  """Conv1D(filters, kernel_size, padding='same', relu) then MaxPooling1D(pool_size).

  Input (B, T, E), or `Embedded` ids (B, T) -> (B, T // pool_size, F). With a mask (B, T)
  (real steps first, padding after), padded inputs count as zeros, as at the end of an
  unpadded sequence, and a pooled step is real only if its whole window is: the output's real
  steps are those of the same sequence run alone, and the returned mask (B, T // pool_size)
  marks them. On the native kernel's path, embedded ids are convolved as a sum of looked-up
  rows (`conv_taps`) and never gathered: the conv's cost then no longer grows with the batch.
  """

  filters: int
  kernel_size: int
  pool_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array | Embedded, mask: Array | None = None
               ) -> tuple[Array, Array | None]:
    kernel, bias = ConvWeights(self.filters, self.kernel_size, name="conv")(inputs.shape[-1])
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    if isinstance(inputs, Embedded) and native_lstm.enabled(self.dtype):
      pad = -self.filters % native_lstm.CONV_FEATURES_MULTIPLE
      x = _native_conv_front_end(inputs.table.astype(self.dtype), inputs.ids, mask,
                                 jnp.pad(kernel, ((0, 0), (0, 0), (0, pad))),
                                 jnp.pad(bias, (0, pad)), self.pool_size)[..., :self.filters]
    else:
      x = (inputs.gather() if isinstance(inputs, Embedded) else inputs).astype(self.dtype)
      if mask is not None:
        x = x * mask[..., None]
      x = jax.lax.conv_general_dilated(x, kernel, (1,), "SAME",
                                       dimension_numbers=("NWC", "WIO", "NWC")) + bias
      x = max_pool_over_time(nn.relu(x), self.pool_size)
    if mask is not None:
      mask = -max_pool_over_time(-mask[..., None].astype(x.dtype), self.pool_size)[..., 0] > 0
    return x, mask


def conv_taps(table: Array, kernel: Array) -> Array:
  """Every word's contribution to a 'same' Conv1D at each of its taps: table (V, E) and kernel
  (K, E, F) -> (V, K * F), row v holding [table[v] @ kernel[0], ..., table[v] @ kernel[K-1]]."""
  taps, features, filters = kernel.shape
  return table @ jnp.transpose(kernel, (1, 0, 2)).reshape(features, taps * filters)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _native_conv_front_end(table, ids, mask, kernel, bias, pool_size):
  return _native_conv_front_end_fwd(table, ids, mask, kernel, bias, pool_size)[0]


def _native_conv_front_end_fwd(table, ids, mask, kernel, bias, pool_size):
  taps = conv_taps(table, kernel)
  return (native_lstm.conv_forward(taps, ids, mask, bias, pool_size),
          (table, ids, mask, kernel, bias, taps))


def _native_conv_front_end_bwd(pool_size, saved, grad):
  table, ids, mask, kernel, bias, taps = saved
  d_taps, d_bias = native_lstm.conv_backward(taps, ids, mask, bias, grad, pool_size)
  _, d_table_kernel = jax.vjp(conv_taps, table, kernel)
  d_table, d_kernel = d_table_kernel(d_taps)
  return d_table, None, None, d_kernel, d_bias


_native_conv_front_end.defvjp(_native_conv_front_end_fwd, _native_conv_front_end_bwd)


def max_pool_over_time(x: Array, size: int) -> Array:
  """MaxPooling1D(size), 'valid': (B, T, C) -> (B, T // size, C).

  Selects among `size` strided slices rather than calling `nn.max_pool`: the same values and
  gradient (the first of tied values takes it, as in Keras), but the gradient is elementwise,
  where `nn.max_pool`'s (select-and-scatter) takes ~20 ms of a `cnn_lstm` train step on
  XLA:CPU.
  """
  steps = x.shape[1] // size * size
  return functools.reduce(lambda best, new: jnp.where(best >= new, best, new),
                          [x[:, i:steps:size] for i in range(size)])


def pool_over_time(states: Array, mask: Array | None, pooling: str) -> Array:
  """(B, T, D) states of every step -> (B, D) max or mean over the real steps, or (B, 2D) both.

  mask (B, T) marks the real steps (all of them if None); a sequence must have at least one.
  """
  real = jnp.ones(states.shape[:2], bool) if mask is None else mask
  pooled = []
  if pooling in ("max", "max_mean"):
    pooled.append(jnp.max(jnp.where(real[..., None], states, -jnp.inf), axis=1))
  if pooling in ("mean", "max_mean"):
    count = jnp.maximum(jnp.sum(real, axis=1, keepdims=True), 1).astype(states.dtype)
    pooled.append(jnp.sum(jnp.where(real[..., None], states, 0), axis=1) / count)
  return jnp.concatenate(pooled, axis=-1)


# Multiplier of the polynomial hash that gives each n-gram of two or more words its bucket.
NGRAM_HASH = 1_000_003


def ngram_ids(tokens: Array, vocab_size: int, order: int, buckets: int) -> tuple[Array, Array]:
  """The bag rows of a review's 1..order-word n-grams: (B, T) ids -> (B, order * T) rows and
  whether each is a real n-gram (no padding in it).

  A word's row is its id; n-grams of two or more words share the other `buckets - vocab_size`
  rows by hash.
  """
  real = tokens != PAD_ID
  ids, valid = [tokens], [real]
  code, ok = tokens.astype(jnp.uint32), real
  shared = jnp.uint32(buckets - vocab_size)
  for n in range(1, order):
    following = jnp.pad(tokens[:, n:], ((0, 0), (0, n)), constant_values=PAD_ID)
    code = code * jnp.uint32(NGRAM_HASH) + following.astype(jnp.uint32)  # Wraps mod 2^32.
    ok = ok & (following != PAD_ID)
    ids.append(vocab_size + (code % shared).astype(jnp.int32))
    valid.append(ok)
  return jnp.concatenate(ids, axis=1), jnp.concatenate(valid, axis=1)


def distinct_ngram_ids(tokens: Array, vocab_size: int, order: int, buckets: int
                       ) -> tuple[Array, Array]:
  """As `ngram_ids`, with each row marked real once per review however often it occurs:
  (B, T) ids -> (B, order * T) rows (sorted within a review) and (B, order * T) bool."""
  ids, valid = ngram_ids(tokens, vocab_size, order, buckets)
  ids = jnp.sort(jnp.where(valid, ids, -1), axis=1)
  first = jnp.concatenate([jnp.ones_like(ids[:, :1], bool), ids[:, 1:] != ids[:, :-1]], axis=1)
  return jnp.maximum(ids, 0), first & (ids >= 0)


class NgramBag(nn.Module):
  """The mean embedding of a review's n-grams (a fastText-style bag): (B, T) ids -> (B, dim).

  Every run of 1..order consecutive real ids (not padding) counts once, wherever the padding
  is (`ngram_ids`). Word order enters only within an n-gram, so the bag complements the
  LSTM's long-range reading with exact local phrases ("not good").
  """

  vocab_size: int
  order: int
  buckets: int
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    ids, valid = ngram_ids(tokens, self.vocab_size, self.order, self.buckets)
    rows = self.buckets if self.order > 1 else self.vocab_size
    x = nn.Embed(rows, self.dim, embedding_init=keras_embedding_init, dtype=self.dtype,
                 name="embedding")(ids)
    return pool_over_time(x, valid, "mean")


# The parameter that holds NaiveBayesBag's ratios: set from the training data
# (`naive_bayes_ratios`), never trained.
LOG_COUNT_RATIO = "log_count_ratio"


class NaiveBayesBag(nn.Module):
  """A logistic regression on the set of a review's n-grams, each scaled by its naive-Bayes
  log-count ratio (NBSVM's features, Wang & Manning 2012): (B, T) ids -> (B,) logits.

  logit = sum over the review's distinct n-grams f of ratio[f] * weight[f], plus a bias. The
  ratios, log(P(f | positive) / P(f | negative)) in the training reviews, are a parameter
  that training leaves alone (`is_trained`); the weights start at zero. Scaling by the ratio
  lets the n-grams that tell the classes apart move their logit fastest.
  """

  vocab_size: int
  order: int
  buckets: int

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    ids, distinct = distinct_ngram_ids(tokens, self.vocab_size, self.order, self.buckets)
    ratio = self.param(LOG_COUNT_RATIO, nn.initializers.zeros, (self.buckets,))
    weight = self.param("weight", nn.initializers.zeros, (self.buckets,))
    bias = self.param("bias", nn.initializers.zeros, ())
    terms = jax.lax.stop_gradient(ratio)[ids] * weight[ids]
    return jnp.sum(jnp.where(distinct, terms, 0.0), axis=1) + bias


def naive_bayes_ratios(inputs: np.ndarray, labels: np.ndarray, vocab_size: int, order: int,
                       buckets: int, batch_size: int = 1024) -> np.ndarray:
  """NaiveBayesBag's ratios from training reviews: (N, T) ids, (N,) labels -> (buckets,) float32.

  log(p_pos[f] / p_neg[f]), where p_c counts the reviews of class c that hold n-gram f, plus
  one (Laplace smoothing), normalised to sum to 1, as in NBSVM.
  """
  distinct = jax.jit(functools.partial(distinct_ngram_ids, vocab_size=vocab_size, order=order,
                                       buckets=buckets))
  counts = np.ones((2, buckets))
  for start in range(0, len(labels), batch_size):
    ids, first = map(np.asarray, distinct(inputs[start:start + batch_size]))
    label = np.broadcast_to(labels[start:start + batch_size, None], ids.shape)
    for c in (0, 1):
      counts[c] += np.bincount(ids[first & (label == c)], minlength=buckets)
  p = counts / counts.sum(axis=1, keepdims=True)
  return np.log(p[1] / p[0]).astype(np.float32)


def is_trained(path: tuple) -> bool:
  """Whether the parameter at a `jax.tree_util` key path is trained (NaiveBayesBag's ratios
  are not)."""
  return getattr(path[-1], "key", None) != LOG_COUNT_RATIO


class Classifier(nn.Module):
  """Embedding -> [word dropout] -> [Dropout] -> [ConvFrontEnd] -> LSTM or Bidirectional
  (x lstm_layers) -> [pooling over time] -> [concatenated with an NgramBag] -> [Dropout]
  -> Dense(1) [+ a NaiveBayesBag's logit].

  Input token ids (B, T) int -> one logit per example (B,); sigmoid(logit) is P(positive).
  With `mask_padding`, the ids must be padded after the words ('post'): then a review's logit
  does not depend on the padding, so batches can be cut to their longest review. The tutorial's
  models have one layer and classify the last state (`pooling='last'`); stacked layers read
  every state of the layer below, and 'max', 'mean' or 'max_mean' pool the top layer's states
  over the (real) steps. `lstm_units=0` leaves the bag alone (no embedding, no LSTM).
  """

  vocab_size: int
  embedding_dim: int
  lstm_units: int
  bidirectional: bool = False
  embedding_dropout: float = 0.0
  word_dropout: float = 0.0
  conv_filters: int = 0
  conv_kernel_size: int = 3
  pool_size: int = 2
  lstm_dropout: float = 0.0
  lstm_recurrent_dropout: float = 0.0
  output_dropout: float = 0.0
  lstm_layers: int = 1
  pooling: str = "last"
  ngram_order: int = 0  # 0 = no bag of n-grams.
  ngram_buckets: int = 0
  ngram_dim: int = 0
  ngram_bag: str = "embedding"  # NgramBag, or 'naive_bayes': a NaiveBayesBag.
  # The embedding reads the most frequent this many words, the others as out-of-vocabulary;
  # 0 = all vocab_size (a bag of n-grams reads them all).
  embedding_words: int = 0
  # Padding (id 0, after the words) leaves the LSTM state unchanged; see `LSTM`.
  mask_padding: bool = False
  # bfloat16 computes faster on accelerators; parameters and the optimizer stay float32.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, *, train: bool = False,
               perturbation: Array | None = None) -> Array:
    """`perturbation` (B, T, embedding_dim), if given, is added to the embedded words after
    their dropout: adversarial training's input (train.adversarial_perturbation)."""
    features = [self.read(tokens, train, perturbation)] if self.lstm_units else []
    if self.ngram_order and self.ngram_bag == "embedding":
      features.append(NgramBag(self.vocab_size, self.ngram_order, self.ngram_buckets,
                               self.ngram_dim, dtype=self.dtype, name="ngram_bag")(tokens))
    logits = jnp.zeros(tokens.shape[:1], jnp.float32)
    if features:
      x = jnp.concatenate([f.astype(self.dtype) for f in features], axis=-1)
      if self.output_dropout:
        x = nn.Dropout(self.output_dropout, deterministic=not train, name="output_dropout")(x)
      logits += nn.Dense(1, kernel_init=glorot_uniform, dtype=self.dtype,
                         name="dense")(x)[:, 0].astype(jnp.float32)
    if self.ngram_order and self.ngram_bag == "naive_bayes":
      logits += NaiveBayesBag(self.vocab_size, self.ngram_order, self.ngram_buckets,
                              name="naive_bayes_bag")(tokens)
    return logits

  def read(self, tokens: Array, train: bool, perturbation: Array | None) -> Array:
    """The (pooled) top LSTM layer: (B, T) ids -> (B, H), (B, 2H) or twice that if pooled
    both ways."""
    mask = tokens != PAD_ID if self.mask_padding else None
    words = self.embedding_words or self.vocab_size
    ids = embedding_ids(tokens, words)
    embed = nn.Embed(words, self.embedding_dim, embedding_init=keras_embedding_init,
                     dtype=self.dtype, name="embedding")
    x = embedded = embed(ids)
    if train:  # A no-op unless the caller passes the probe; its gradient is then x's.
      x = self.perturb(EMBEDDED, x, collection=PROBES)
    if self.word_dropout:  # One draw per word, shared by its embedding's features.
      x = nn.Dropout(self.word_dropout, broadcast_dims=(2,), deterministic=not train,
                     name="word_dropout")(x)
    if self.embedding_dropout:
      x = nn.Dropout(self.embedding_dropout, deterministic=not train,
                     name="embedding_dropout")(x)
    if perturbation is not None:
      x = x + perturbation.astype(x.dtype)
    if x is embedded and ids.size >= words:
      # Nothing (dropout, perturbation, probe) came between, and transforming the table
      # (projecting it, convolving it) costs less than transforming every token.
      x = Embedded(embed.embedding, ids)
    if self.conv_filters:
      x, mask = ConvFrontEnd(self.conv_filters, self.conv_kernel_size, self.pool_size,
                             dtype=self.dtype, name="conv_front_end")(x, mask)
    x = recurrent_layers(x, mask, units=self.lstm_units, layers=self.lstm_layers,
                         bidirectional=self.bidirectional, dropout=self.lstm_dropout,
                         recurrent_dropout=self.lstm_recurrent_dropout,
                         return_sequences=self.pooling != "last", dtype=self.dtype, train=train)
    if self.pooling != "last":
      x = pool_over_time(x, mask, self.pooling)
    return x


def recurrent_layers(x: Array, mask: Array | None, *, units: int, layers: int,
                     bidirectional: bool, dropout: float, recurrent_dropout: float,
                     return_sequences: bool, dtype: Any, train: bool) -> Array:
  """`layers` stacked LSTMs (or Bidirectional LSTMs), each above the first reading every state
  of the one below, made inside the calling module's compact method under the names
  'lstm', 'lstm_1', ... ('bidirectional', ...): the names a language model and a classifier
  share, so that one's parameters can start the other's.

  x (B, T, E) -> the top layer's final state (B, H or 2H), or with return_sequences every
  state (B, T, H or 2H).
  """
  rnn = Bidirectional if bidirectional else LSTM
  name = "bidirectional" if bidirectional else "lstm"
  for layer in range(layers):
    top = layer == layers - 1
    x = rnn(units, dropout=dropout, recurrent_dropout=recurrent_dropout,
            return_sequences=not top or return_sequences, dtype=dtype,
            name=f"{name}_{layer}" if layer else name)(x, mask, train=train)
  return x


def log_expected_count(ids: Array, num: int, vocab_size: int) -> Array:
  """log(num * P(id)): how often `num` draws of `log_uniform_sample` pick each id, in logs."""
  p = jnp.log1p(1.0 / (ids + 1.0)) / jnp.log(vocab_size + 1.0)
  return jnp.log(float(num)) + jnp.log(p)


def log_uniform_sample(rng: Array, num: int, vocab_size: int) -> Array:
  """`num` ids drawn with replacement from P(k) = log((k + 2) / (k + 1)) / log(V + 1): Zipf's
  law, for ids ranked by frequency as the vocabulary ranks them."""
  u = jax.random.uniform(rng, (num,))
  ids = jnp.floor(jnp.exp(u * jnp.log(vocab_size + 1.0))).astype(jnp.int32) - 1
  return jnp.clip(ids, 0, vocab_size - 1)


def sampled_softmax(states: Array, targets: Array, weights: Array, bias: Array, rng: Array,
                    num_sampled: int) -> tuple[Array, Array]:
  """The sampled softmax (Jean et al. 2015): each of the (N, H) states' (N,) targets against
  `num_sampled` words drawn once for the whole batch (`log_uniform_sample`), each logit less
  the log of its word's expected count, a draw of the target itself left out. weights (V, H),
  one row per word, and bias (V,).

  Returns (N,) losses, and (N,) whether the target's logit beat every drawn word's.
  """
  vocab_size = weights.shape[0]
  sampled = log_uniform_sample(rng, num_sampled, vocab_size)
  true_logit = (jnp.sum(states * weights[targets], axis=-1) + bias[targets]
                - log_expected_count(targets, num_sampled, vocab_size))
  sampled_logits = (states @ weights[sampled].T + bias[sampled]
                    - log_expected_count(sampled, num_sampled, vocab_size))
  sampled_logits = jnp.where(sampled[None, :] == targets[:, None], -jnp.inf, sampled_logits)
  logits = jnp.concatenate([true_logit[:, None], sampled_logits], axis=1)
  losses = jax.nn.logsumexp(logits, axis=1) - true_logit
  return losses, true_logit > jnp.max(sampled_logits, axis=1)


def full_softmax(states: Array, targets: Array, weights: Array, bias: Array,
                 chunk: int = 1024) -> tuple[Array, Array]:
  """The softmax over every word: (N, H) states and (N,) targets -> (N,) losses and whether
  the most likely word is the target; weights (V, H) and bias (V,). Computed `chunk` states at
  a time, so that the (N, V) logits never exist whole."""
  n = states.shape[0]
  padded = -(-n // chunk) * chunk
  states = jnp.pad(states, ((0, padded - n), (0, 0))).reshape(-1, chunk, states.shape[1])
  targets = jnp.pad(targets, (0, padded - n)).reshape(-1, chunk)

  def one_chunk(xs):
    h, t = xs
    logits = h @ weights.T + bias
    target_logit = jnp.take_along_axis(logits, t[:, None], axis=1)[:, 0]
    return (jax.nn.logsumexp(logits, axis=1) - target_logit,
            jnp.argmax(logits, axis=1) == t)

  losses, correct = jax.lax.map(one_chunk, (states, targets))
  return losses.reshape(-1)[:n], correct.reshape(-1)[:n]


class LanguageModel(nn.Module):
  """An LSTM language model on the classifier's layers: Embedding -> [Dropout] -> LSTM
  (x lstm_layers) -> [Dropout] -> softmax over the vocabulary. Each state predicts the next
  word; with `bidirectional`, a second LSTM reads each review backwards and each of its states
  predicts the word before (two language models sharing the embedding and the softmax, as in
  ELMo). Its embedding and LSTMs have the names and shapes of a `Classifier`'s, which can
  start from them (pretrained.py).

  tokens (B, T) ids, words first then padding -> (losses, correct, real), each (B, P) with
  P = T - 1, or 2 (T - 1) bidirectionally: each prediction's cross-entropy, whether it was
  right, and whether it is a real one (its target and its inputs are words, not padding).
  In training the softmax is sampled (`sampled_words` > 0; `sampled_softmax`), and "right"
  means the target beat the sampled words; otherwise it is the full softmax.
  """

  vocab_size: int
  embedding_dim: int
  lstm_units: int
  lstm_layers: int = 1
  bidirectional: bool = False
  embedding_dropout: float = 0.0
  lstm_dropout: float = 0.0
  lstm_recurrent_dropout: float = 0.0
  output_dropout: float = 0.0
  sampled_words: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, *, train: bool = False, perturbation: Array | None = None
               ) -> tuple[Array, Array, Array]:
    del perturbation  # Adversarial training needs labels (config.validate refuses it).
    mask = tokens != PAD_ID
    x = nn.Embed(self.vocab_size, self.embedding_dim, embedding_init=keras_embedding_init,
                 dtype=self.dtype, name="embedding")(tokens)
    if self.embedding_dropout:
      x = nn.Dropout(self.embedding_dropout, deterministic=not train,
                     name="embedding_dropout")(x)
    x = recurrent_layers(x, mask, units=self.lstm_units, layers=self.lstm_layers,
                         bidirectional=self.bidirectional, dropout=self.lstm_dropout,
                         recurrent_dropout=self.lstm_recurrent_dropout, return_sequences=True,
                         dtype=self.dtype, train=train)
    if self.output_dropout:
      x = nn.Dropout(self.output_dropout, deterministic=not train, name="output_dropout")(x)
    # The forward states before each word predict it; the backward states after it, too.
    # A prediction is real where the word after it is (the words come first).
    states, targets, real = [x[:, :-1, :self.lstm_units]], [tokens[:, 1:]], [mask[:, 1:]]
    if self.bidirectional:
      states.append(x[:, 1:, self.lstm_units:])
      targets.append(tokens[:, :-1])
      real.append(mask[:, 1:])
    states = jnp.concatenate(states, axis=1).astype(jnp.float32)
    targets, real = jnp.concatenate(targets, axis=1), jnp.concatenate(real, axis=1)
    # One row per word, as an embedding: the sampled softmax reads the rows it needs.
    weights = self.param("softmax_weights", glorot_uniform, (self.vocab_size, self.lstm_units))
    bias = self.param("softmax_bias", nn.initializers.zeros, (self.vocab_size,))
    flat_states = states.reshape(-1, self.lstm_units)
    if train and self.sampled_words:
      losses, correct = sampled_softmax(flat_states, targets.reshape(-1), weights, bias,
                                        self.make_rng("dropout"), self.sampled_words)
    else:
      losses, correct = full_softmax(flat_states, targets.reshape(-1), weights, bias)
    return losses.reshape(targets.shape), correct.reshape(targets.shape), real


def predicted_words(tokens: np.ndarray, bidirectional: bool) -> np.ndarray:
  """The ids a LanguageModel predicts in (N, T) reviews (words first): each word after the
  first, and with `bidirectional` each word before the last too; flattened."""
  real = tokens[:, 1:] != PAD_ID
  words = [tokens[:, 1:][real]] + ([tokens[:, :-1][real]] if bidirectional else [])
  return np.concatenate(words)


def unigram_perplexity(train_tokens: np.ndarray, tokens: np.ndarray, vocab_size: int,
                       bidirectional: bool) -> float:
  """The perplexity on `tokens` (N, T) of each word's frequency among `train_tokens`' (add-one
  smoothed): what a language model must beat to have learnt more than word counts."""
  counts = np.bincount(predicted_words(train_tokens, bidirectional), minlength=vocab_size) + 1.0
  p = counts / counts.sum()
  return float(np.exp(-np.mean(np.log(p[predicted_words(tokens, bidirectional)]))))


def create_model(config: ml_collections.ConfigDict) -> "Classifier | LanguageModel":
  """The classifier (or with task='language_model', the language model) a config describes."""
  if config.task == "language_model":
    return LanguageModel(
        vocab_size=config.top_words,
        embedding_dim=config.embedding_dim,
        lstm_units=config.lstm_units,
        lstm_layers=config.lstm_layers,
        bidirectional=config.bidirectional,
        embedding_dropout=config.embedding_dropout,
        lstm_dropout=config.lstm_dropout,
        lstm_recurrent_dropout=config.lstm_recurrent_dropout,
        output_dropout=config.output_dropout,
        sampled_words=config.lm_sampled_words,
        dtype=jnp.dtype(config.compute_dtype),
    )
  return Classifier(
      vocab_size=config.top_words,
      embedding_dim=config.embedding_dim,
      lstm_units=config.lstm_units,
      bidirectional=config.bidirectional,
      embedding_dropout=config.embedding_dropout,
      word_dropout=config.word_dropout,
      conv_filters=config.conv_filters,
      conv_kernel_size=config.conv_kernel_size,
      pool_size=config.pool_size,
      lstm_dropout=config.lstm_dropout,
      lstm_recurrent_dropout=config.lstm_recurrent_dropout,
      output_dropout=config.output_dropout,
      lstm_layers=config.lstm_layers,
      pooling=config.pooling,
      ngram_order=config.ngram_order,
      ngram_buckets=config.ngram_buckets,
      ngram_dim=config.ngram_dim,
      ngram_bag=config.ngram_bag,
      embedding_words=config.embedding_top_words,
      mask_padding=config.mask_padding,
      dtype=jnp.dtype(config.compute_dtype),
  )


# Where `Classifier` lets a zero (B, T, embedding_dim) probe be added to the looked-up word
# vectors, to take the loss's gradient with respect to each occurrence of a word.
PROBES = "probes"
EMBEDDED = "embedded"


def embedding_ids(tokens: Array, rows: int) -> Array:
  """The embedding rows (B, T) that token ids (B, T) read: ids >= rows read out-of-vocabulary."""
  return jnp.where(tokens < rows, tokens, OOV_ID)


def embedding_table(params: Any) -> Array:
  """A Classifier's word vectors (vocab_size, embedding_dim)."""
  return params["embedding"]["embedding"]


def count_params(params: Any) -> int:
  """The number of trained parameters (NaiveBayesBag's ratios are not)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return sum(x.size for path, x in leaves if is_trained(path))
