"""The tuned BiLSTM: the best config with an LSTM alone in experiments/best.py's search (the
trial `bilstm`; 89.75 ± 0.19% test over seeds 7, 8, 9, experiments/results/best_adversarial.md).

Embedding(5,000 words, 64) with word dropout 0.3 and dropout 0.3, Conv1D(64, 3, relu) +
MaxPooling1D(2), Bidirectional(LSTM(200)), the max and the mean of its states over the real
steps, dropout 0.5, Dense(1); reviews of up to 800 words, masked and bucketed; adversarial
training on the embeddings (epsilon 0.15); Adam 2e-3 with cosine decay over 5 epochs,
gradient norm clipped at 1, batches of 32, evaluated with a moving average of the parameters.
Chosen on a validation split of held-out movies (`--config.validation_groups=<file>`, written
by experiments/imdb_movies.py; without it, 2,500 random training reviews); the test split is
evaluated once, on the checkpoint of the best epoch on validation.
"""

from seqjax import config as config_lib


def get_config():
  config = config_lib.tuned_training(config_lib.base_config())
  config.name = "tuned_bilstm"
  config.embedding_dim = 64
  config.word_dropout = 0.3
  config.embedding_dropout = 0.3
  config.conv_filters = 64
  config.lstm_units = 200
  config.bidirectional = True
  config.pooling = "max_mean"
  config.output_dropout = 0.5
  config.adversarial_epsilon = 0.15
  return config
