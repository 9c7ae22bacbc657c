"""The tutorial's LSTM(100, dropout=0.2, recurrent_dropout=0.2); 213,301 parameters."""

from seqjax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.name = "lstm_recurrent_dropout"
  config.lstm_dropout = 0.2
  config.lstm_recurrent_dropout = 0.2
  return config
