"""The tutorial's Bidirectional(LSTM(100, dropout=0.2, recurrent_dropout=0.2)); 266,601 params.

Trained with Keras' Adam, as the tutorial's Keras trained it (`config_lib.tutorial_config`).
"""

from seqjax import config as config_lib


def get_config():
  config = config_lib.tutorial_config()
  config.name = "bilstm"
  config.bidirectional = True
  config.lstm_dropout = 0.2
  config.lstm_recurrent_dropout = 0.2
  return config
