"""A BiLSTM classifier whose embedding and LSTMs start from a pretrained language model:
`--config.init_from=<workdir>` of a configs/language_model.py run. Without it, the same
classifier trained from scratch (the ablation).

The language model's vocabulary (30,000 words), Embedding(64) and Bidirectional(LSTM(256)),
then the max and the mean of the states over the real steps, dropout 0.5 and Dense(1); the
tuned BiLSTM's training (config_lib.tuned_training: reviews of up to 800 words, masked and
bucketed, Adam 2e-3 with a cosine decay over 5 epochs, batches of 32, a moving average of the
parameters, 2,500 training reviews for validation and the test split evaluated once, on the
best epoch on validation).
"""

from seqjax import config as config_lib


def get_config():
  config = config_lib.tuned_training(config_lib.base_config())
  config.name = "pretrained_bilstm"
  config.top_words = 30000
  config.embedding_dim = 64
  config.lstm_units = 256
  config.bidirectional = True
  config.word_dropout = 0.1
  config.pooling = "max_mean"
  config.output_dropout = 0.5
  return config
