"""A naive-Bayes bag of n-grams alone, no LSTM: the best config on validation of
experiments/best.py's search (91.64 ± 0.01% test; experiments/results/best.md).

A logistic regression on the set of each review's 1-, 2- and 3-word n-grams, each scaled by
its naive-Bayes log-count ratio in the training split (NBSVM's features, Wang & Manning 2012),
trained by Adam: 30,000 words, reviews of up to 800 words, batches of 32, evaluated with a
moving average of the parameters. On validation it beat every LSTM config tried, the tuned
BiLSTM with this bag beside it too (configs/bilstm_naive_bayes_bag.py: level within noise, at
27 times the training time). Trained on the 25,000 labelled reviews only. The choices were
made on a validation split of held-out movies carved from the training set; the test split is
evaluated once, on the checkpoint of the best epoch on validation. Give the split as
`--config.validation_groups=<file>` (written by experiments/imdb_movies.py); without it,
validation is a random 2,500 training reviews.
"""

from seqjax import config as config_lib


def get_config():
  config = config_lib.tuned_training(config_lib.base_config())
  config.name = "naive_bayes_bag"
  config.top_words = 30000
  config.lstm_units = 0
  config.ngram_order = 3
  config.ngram_buckets = 2**22
  config.ngram_bag = "naive_bayes"
  return config
