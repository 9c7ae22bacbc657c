"""configs/cnn_lstm.py with exact masking and length bucketing (see `config_lib.bucketed`)."""

import pathlib

from seqjax import config as config_lib


def get_config():
  return config_lib.bucketed(pathlib.Path(__file__).with_name("cnn_lstm.py"))
