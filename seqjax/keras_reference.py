"""The tutorial's models in Keras 3, built from a seqjax config, and seqjax's weights copied
into them: the reference that seqjax's forward pass and training are checked against.

Keras (and TensorFlow, its backend here) is imported only when a model is built.
"""

from typing import Any

import ml_collections
import numpy as np

from seqjax import config as config_lib
from seqjax.errors import ConfigError

# What the Keras twin does not build: keys that must keep their base_config() values.
_UNSUPPORTED = ("word_dropout", "mask_padding", "lstm_layers", "pooling", "ngram_order",
                "embedding_top_words", "compute_dtype")


def keras_model(config: ml_collections.ConfigDict) -> Any:
  """The `keras.Sequential` a tutorial-shaped config describes: Embedding -> [Dropout] ->
  [Conv1D + MaxPooling1D] -> LSTM or Bidirectional(LSTM) -> [Dropout] -> Dense(1, sigmoid).

  Input (B, max_length) int32 ids -> (B, 1) probabilities. Raises ConfigError for a config
  with something the tutorial's models lack (masking, pooling, stacked layers, n-grams).
  """
  base = config_lib.base_config()
  for key in _UNSUPPORTED:
    if config[key] != base[key]:
      raise ConfigError(f"config.{key}={config[key]!r} has no Keras twin here: the Keras "
                        f"reference builds the tutorial's models only; use {base[key]!r}.")
  import keras
  from keras import layers

  stack = [keras.Input((config.max_length,), dtype="int32"),
           layers.Embedding(config.top_words, config.embedding_dim)]
  if config.embedding_dropout:
    stack.append(layers.Dropout(config.embedding_dropout))
  if config.conv_filters:
    stack += [layers.Conv1D(config.conv_filters, config.conv_kernel_size, padding="same",
                            activation="relu"),
              layers.MaxPooling1D(config.pool_size)]
  lstm = layers.LSTM(config.lstm_units, dropout=config.lstm_dropout,
                     recurrent_dropout=config.lstm_recurrent_dropout)
  stack.append(layers.Bidirectional(lstm) if config.bidirectional else lstm)
  if config.output_dropout:
    stack.append(layers.Dropout(config.output_dropout))
  return keras.Sequential(stack + [layers.Dense(1, activation="sigmoid")])


def keras_weights(params: Any) -> list[np.ndarray]:
  """A tutorial-shaped Classifier's parameters in the order of its Keras twin's `weights`.

  seqjax's parameters are in Keras' layout already (LSTM gates i, f, c, o; Conv1D kernel
  (width, in, out)); only the order of the list is Keras'.
  """
  weights = [params["embedding"]["embedding"]]
  if "conv_front_end" in params:
    conv = params["conv_front_end"]["conv"]
    weights += [conv["kernel"], conv["bias"]]
  lstms = ([params["bidirectional"]["forward"], params["bidirectional"]["backward"]]
           if "bidirectional" in params else [params["lstm"]])
  for lstm in lstms:
    weights += [lstm["kernel"], lstm["recurrent_kernel"], lstm["bias"]]
  weights += [params["dense"]["kernel"], params["dense"]["bias"]]
  return [np.asarray(w) for w in weights]


def copy_weights(params: Any, model: Any) -> None:
  """Sets the Keras twin's weights to seqjax's `params`."""
  model.set_weights(keras_weights(params))


def compiled_twin(config: ml_collections.ConfigDict, params: Any) -> Any:
  """The Keras twin with seqjax's `params`, compiled as the tutorial: Keras' Adam with the
  config's learning rate and epsilon, binary cross-entropy."""
  import keras
  model = keras_model(config)
  copy_weights(params, model)
  model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, epsilon=config.adam_epsilon),
                loss="binary_crossentropy")
  return model


def weight_differences(params: Any, model: Any) -> list[float]:
  """Max |seqjax - Keras| of each weight, in Keras' order (the embedding first)."""
  return [float(np.max(np.abs(w - v)))
          for w, v in zip(keras_weights(params), model.get_weights(), strict=True)]
