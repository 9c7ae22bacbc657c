"""The tutorial's LSTM: Embedding(5000, 32) -> LSTM(100) -> Dense(1); 213,301 parameters.

Trained with Keras' Adam, as the tutorial's Keras trained it (`config_lib.tutorial_config`).
"""

from seqjax import config as config_lib


def get_config():
  return config_lib.tutorial_config()
