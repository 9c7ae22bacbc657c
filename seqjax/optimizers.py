"""Keras' Adam as an optax transformation, and Keras 3's per-occurrence squares of an
embedding's gradient.

Keras (1, 2 and 3) steps each parameter by

  lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

with epsilon added to the square root of the uncorrected second moment v; optax's Adam adds it
to that of the bias-corrected v / (1 - b2^t). Keras' epsilon is thus in effect
eps / sqrt(1 - b2^t): 32 times larger than optax's at the first step, and still 1.8 times
after 391. Parameters with small gradients move less in Keras early in training.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class KerasAdamState(NamedTuple):
  count: jax.Array  # Steps taken, int32 ().
  mu: Any  # First moments, as the parameters.
  nu: Any  # Second moments, as the parameters.


def keras_adam(learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-7) -> optax.GradientTransformationExtraArgs:
  """Keras' `Adam(learning_rate, beta_1=b1, beta_2=b2, epsilon=eps)`, step for step.

  The moments are updated in Keras' form, m += (g - m) (1 - b1) and v += (g^2 - v) (1 - b2).
  `update` takes an optional `squared_grads`, a pytree like the gradients: what is added to v
  in place of the gradients' squares (see `embedding_squares`); None = their squares.
  A schedule is read at the step count before the update, as Keras reads `iterations`.
  """

  def init(params: Any) -> KerasAdamState:
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
    return KerasAdamState(count=jnp.zeros((), jnp.int32), mu=zeros(), nu=zeros())

  def update(updates: Any, state: KerasAdamState, params: Any = None, *,
             squared_grads: Any = None, **extra_args) -> tuple[Any, KerasAdamState]:
    del params, extra_args
    if squared_grads is None:
      squared_grads = jax.tree_util.tree_map(jnp.square, updates)
    count = state.count + 1
    t = count.astype(jnp.float32)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    alpha = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
    mu = jax.tree_util.tree_map(lambda m, g: m + (g - m) * (1 - b1), state.mu, updates)
    nu = jax.tree_util.tree_map(lambda v, g2: v + (g2 - v) * (1 - b2), state.nu, squared_grads)
    steps = jax.tree_util.tree_map(lambda m, v: -(m * alpha) / (jnp.sqrt(v) + eps), mu, nu)
    return steps, KerasAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformationExtraArgs(init, update)


def embedding_squares(embedded_grad: jax.Array, ids: jax.Array, rows: int) -> jax.Array:
  """Keras 3's second-moment increment for an embedding table: the sum, over each row's
  occurrences in the batch, of the squared gradient of each occurrence.

  embedded_grad (B, T, E), the loss's gradient with respect to the looked-up vectors;
  ids (B, T), the rows looked up -> (rows, E). The table's gradient is the sum of a row's
  occurrence gradients, and Adam would square that sum: a word seen twice with gradient 1 adds
  4 to v, here 2. This reproduces a framework's quirk, not a better method: with TensorFlow,
  the gradient of a gather is a `tf.IndexedSlices` with one slice per occurrence, and Keras 3's
  `ops.square` squares the slices before the duplicates are summed.
  """
  flat = embedded_grad.reshape(-1, embedded_grad.shape[-1])
  return jax.ops.segment_sum(jnp.square(flat), ids.reshape(-1), num_segments=rows)
