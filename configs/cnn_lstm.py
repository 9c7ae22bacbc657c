"""The tutorial's Conv1D(32, 3, 'same', relu) + MaxPooling1D(2) + LSTM(100); 216,405 parameters.

Trained with Keras' Adam, as the tutorial's Keras trained it (`config_lib.tutorial_config`).
"""

from seqjax import config as config_lib


def get_config():
  config = config_lib.tutorial_config()
  config.name = "cnn_lstm"
  config.conv_filters = 32
  config.conv_kernel_size = 3
  config.pool_size = 2
  return config
