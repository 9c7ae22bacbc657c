"""The tuned BiLSTM (configs/tuned_bilstm.py) with configs/naive_bayes_bag.py's bag beside it:
the best config with an LSTM (91.86 ± 0.05% test over seeds 7, 8, 9;
experiments/results/best.md).

Their logits are added and trained together. The BiLSTM's embedding reads the 5,000 most
frequent words, the bag all 30,000 and its 1-3-grams. On validation (the trial
bilstm_and_trigrams of experiments/best.py, the best of the trials with an LSTM) it is level
with the bag alone, within noise, at 27 times the training time.
"""

import pathlib

from seqjax import config as config_lib


# What configs/naive_bayes_bag.py's bag is made of.
BAG_KEYS = ("top_words", "ngram_order", "ngram_buckets", "ngram_bag")


def get_config():
  here = pathlib.Path(__file__).parent
  bag = config_lib.from_file(here / "naive_bayes_bag.py")
  config = config_lib.from_file(here / "tuned_bilstm.py")
  config.name = "bilstm_naive_bayes_bag"
  config.update({key: bag[key] for key in BAG_KEYS})
  config.embedding_top_words = 5000  # The BiLSTM reads the words it was tuned with.
  return config
