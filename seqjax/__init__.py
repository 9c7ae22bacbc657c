"""seqjax: LSTM-family text classifiers in JAX/Flax, faithful to the classic Keras tutorial."""

__version__ = "0.1.0"


def load(workdir: str, batch_size: int = 256):
  """The model trained in `workdir`: `seqjax.load("runs/bilstm").predict(["Great film."])`."""
  from seqjax import predict  # Imported here so that `import seqjax` stays light.
  return predict.load(workdir, batch_size)
