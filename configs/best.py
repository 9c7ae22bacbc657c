"""Beyond the tutorial: a masked, bucketed Conv1D + BiLSTM(200) over reviews of up to 800 words,
pooled over time, with word dropout and adversarial training on the word embeddings; batches
of 32, evaluated with a moving average of the parameters.

Trained on the 25,000 labelled reviews only. The choices below were made on a validation split
of held-out movies carved from the training set (experiments/best.py; its log is
experiments/results/best.md); the test split is evaluated once, on the checkpoint of the best
epoch on validation. Give the split as `--config.validation_groups=<file>` (written by
experiments/imdb_movies.py); without it, validation is a random 2,500 training reviews.
"""

from seqjax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.name = "best"
  config.top_words = 5000
  config.max_length = 800
  config.padding = "post"
  config.mask_padding = True
  config.bucket_width = 50
  config.embedding_dim = 64
  config.word_dropout = 0.3
  config.embedding_dropout = 0.3
  config.conv_filters = 64
  config.lstm_units = 200
  config.bidirectional = True
  config.pooling = "max_mean"
  config.output_dropout = 0.5
  config.learning_rate = 2e-3
  config.learning_rate_schedule = "cosine"
  config.gradient_clip_norm = 1.0
  config.batch_size = 32
  config.ema_decay = 0.998
  config.adversarial_epsilon = 0.15
  config.num_epochs = 5
  config.validation_size = 2500
  config.evaluate_test = "best_epoch"
  return config
