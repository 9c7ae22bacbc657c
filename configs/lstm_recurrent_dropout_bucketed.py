"""configs/lstm_recurrent_dropout.py with exact masking and length bucketing."""

import pathlib

from seqjax import config as config_lib


def get_config():
  return config_lib.bucketed(pathlib.Path(__file__).with_name("lstm_recurrent_dropout.py"))
