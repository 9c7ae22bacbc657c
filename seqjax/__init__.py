"""seqjax: LSTM-family text classifiers in JAX/Flax, faithful to the classic Keras tutorial."""

__version__ = "0.1.0"
