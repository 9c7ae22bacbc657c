"""A bidirectional LSTM language model of IMDB's text, for configs/pretrained_bilstm.py to
start from (`--config.init_from=<this run's workdir>`).

Two LSTM(256) language models over a shared Embedding(30,000 words, 64) and a shared
softmax: one predicts each word from the words before it, the other from the words after it
(models.LanguageModel). They read the 75,000 reviews of the `train` and `unsupervised` splits,
labels unread, never the `test` split; 1,000 of them, held out at random, give the perplexity
after each epoch, and the epoch of the lowest is the one a classifier starts from. Reviews are
read from their first word, cut after 400, bucketed by length. The softmax is sampled in
training (1,024 words a step) and full in evaluation. A checkpoint every 200 steps: an epoch
took 14 minutes on two CPU cores (experiments/results/semi_supervised.md), and a rerun resumes.
"""

from seqjax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.name = "language_model"
  config.task = "language_model"
  config.lm_splits = "train,unsupervised"
  config.validation_size = 1000
  config.evaluate_test = "never"
  config.top_words = 30000
  config.max_length = 400
  config.padding = "post"
  config.truncating = "post"
  config.mask_padding = True
  config.bucket_width = 50
  config.embedding_dim = 64
  config.lstm_units = 256
  config.bidirectional = True
  config.lstm_dropout = 0.1
  config.output_dropout = 0.1
  config.lm_sampled_words = 1024
  config.gradient_clip_norm = 1.0
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 10
  config.checkpoint_every_steps = 200
  return config
