"""The tutorial's LSTM: Embedding(5000, 32) -> LSTM(100) -> Dense(1); 213,301 parameters."""

from seqjax import config as config_lib


def get_config():
  return config_lib.base_config()
