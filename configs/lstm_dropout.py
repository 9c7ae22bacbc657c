"""The tutorial's LSTM with Dropout(0.2) layers before and after it; 213,301 parameters.

Trained with Keras' Adam, as the tutorial's Keras trained it (`config_lib.tutorial_config`).
"""

from seqjax import config as config_lib


def get_config():
  config = config_lib.tutorial_config()
  config.name = "lstm_dropout"
  config.embedding_dropout = 0.2
  config.output_dropout = 0.2
  return config
