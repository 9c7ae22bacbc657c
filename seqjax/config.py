"""The shared base of every config in `configs/`, and its validation.

Defaults are the Keras tutorial's: IMDB, 5,000 words, reviews cut or padded to 500 tokens
('pre' on both sides), Embedding(5000, 32), LSTM(100), Dense(1), Adam(1e-3), batch 64,
3 epochs, seed 7. A config file changes only what makes its model different.
"""

import importlib.util
import os
import pathlib

import ml_collections

from seqjax.errors import ConfigError

PAD_SIDES = ("pre", "post")
POOLINGS = ("last", "max", "mean", "max_mean")
NGRAM_BAGS = ("embedding", "naive_bayes")
TEST_EVALUATIONS = ("every_epoch", "best_epoch", "never")
OPTIMIZERS = ("adam", "keras_adam")
TASKS = ("classify", "language_model")


def base_config() -> ml_collections.ConfigDict:
  """Returns the tutorial's plain LSTM; `configs/*.py` start from this."""
  config = ml_collections.ConfigDict()
  config.name = "lstm"
  # 'classify' the reviews (the tutorial), or train a 'language_model' on their text
  # (models.LanguageModel) for a classifier to start from (init_from).
  config.task = "classify"

  # Data: any TFDS dataset with a `text` and a binary `label` feature.
  config.dataset = "imdb_reviews"
  config.train_split = "train"
  config.eval_split = "test"
  # '' means $TFDS_DATA_DIR, else TFDS' default (~/tensorflow_datasets).
  config.data_dir = ""
  # Download and prepare the dataset when no prepared copy is found (needs internet).
  config.download = True
  # '' means $XDG_CACHE_HOME/seqjax (~/.cache/seqjax); encoded arrays are kept there.
  config.cache_dir = ""
  config.top_words = 5000
  config.max_length = 500
  config.padding = "pre"
  config.truncating = "pre"
  config.max_train_examples = 0  # 0 = all
  config.max_eval_examples = 0  # 0 = all
  # Examples carved from the training split to choose on; 0 = none (the tutorial).
  config.validation_size = 0
  # A text file with one group id per training example (e.g. its movie), in the dataset's
  # order: validation then holds out whole groups, at random, until it has validation_size
  # examples or more. '' = random examples.
  config.validation_groups = ""
  # When the test split is evaluated: 'every_epoch' (the tutorial); 'best_epoch', once at
  # the end, on the checkpoint of the best epoch on validation; 'never' (to choose configs
  # on validation alone). The last two need validation_size > 0.
  config.evaluate_test = "every_epoch"
  # The language model's text: these splits' reviews, labels unread (comma-separated). Its
  # validation_size reviews, held out at random, measure its perplexity after each epoch.
  config.lm_splits = "train,unsupervised"

  # Model: Embedding -> [word dropout, Dropout] -> [Conv1D + MaxPool] -> (Bi)LSTM -> [pooling]
  # -> [concatenated with a bag of n-grams] -> [Dropout] -> Dense(1).
  config.embedding_dim = 32
  config.embedding_dropout = 0.0  # Dropout layer after the embedding.
  config.word_dropout = 0.0  # Drops whole words: a word's embedding is zeroed, all of it.
  config.conv_filters = 0  # 0 = no convolutional front end.
  config.conv_kernel_size = 3
  config.pool_size = 2
  config.lstm_units = 100
  config.lstm_dropout = 0.0  # Keras' LSTM(dropout=...): on the inputs.
  config.lstm_recurrent_dropout = 0.0  # Keras' LSTM(recurrent_dropout=...): on the state.
  config.bidirectional = False
  config.output_dropout = 0.0  # Dropout layer after the LSTM.
  config.lstm_layers = 1  # Stacked (Bi)LSTM layers; each above the first reads all states.
  # What the classifier reads: 'last' state (the tutorial), or 'max', 'mean' or 'max_mean'
  # of the top layer's states over the real steps.
  config.pooling = "last"
  # A bag of n-grams beside the LSTM (models.NgramBag): the mean embedding of the review's
  # 1..ngram_order-word n-grams, concatenated with what the LSTM gives the classifier.
  # 0 = none (the tutorial). Words have their own rows; longer n-grams share the other
  # ngram_buckets - top_words rows by hash.
  config.ngram_order = 0
  config.ngram_buckets = 2**20
  config.ngram_dim = 32
  # 'naive_bayes' makes the bag a logistic regression on the review's distinct n-grams, each
  # scaled by its naive-Bayes log-count ratio in the training split (NBSVM's features;
  # models.NaiveBayesBag), whose logit is added to the LSTM's.
  config.ngram_bag = "embedding"
  # The embedding (and so the LSTM) reads only the most frequent this many of the top_words;
  # the others as out-of-vocabulary, while a bag of n-grams reads them all. 0 = all top_words.
  config.embedding_top_words = 0
  # Exact masking: padded steps leave the LSTM state unchanged, so a review's result does not
  # depend on its batch's padding. Needs padding='post' (the words first).
  config.mask_padding = False
  # With masking, batches group reviews of similar length and are cut to the next multiple of
  # bucket_width above their longest review (at most max_length); 0 = every batch max_length.
  config.bucket_width = 0

  # The language model's output layer: a softmax over all top_words, approximated in training
  # by this many words drawn per step (sampled softmax), each weighed by how often the draw
  # picks it; 0 = the full softmax. Evaluation always takes the full softmax.
  config.lm_sampled_words = 1024
  # A language model run's workdir: the classifier takes its vocabulary, and starts its
  # embedding and (Bi)LSTM from that run's parameters (best on its validation). '' = none.
  config.init_from = ""

  # 'bfloat16' computes in bfloat16 on accelerators (parameters and optimizer stay float32).
  config.compute_dtype = "float32"

  # Training.
  config.learning_rate = 1e-3
  # 'adam': optax's Adam, epsilon added to the bias-corrected sqrt(v / (1 - b2^t)).
  # 'keras_adam': Keras' Adam (optimizers.keras_adam), epsilon added to sqrt(v), so in effect
  # eps / sqrt(1 - b2^t): larger early in training. The tutorial configs use Keras'.
  config.optimizer = "adam"
  config.adam_epsilon = 1e-7  # Keras' Adam default (optax's is 1e-8).
  # With 'keras_adam': the embedding's second moment grows by the sum of the squared gradients
  # of each occurrence of a word in the batch, not by the square of their sum. This
  # reproduces Keras 3's quirk with TensorFlow (optimizers.embedding_squares), not Keras 2's.
  config.keras3_embedding_squares = False
  # 'constant' (the tutorial) or 'cosine': decays to 0 over num_epochs.
  config.learning_rate_schedule = "constant"
  config.gradient_clip_norm = 0.0  # Clip the gradients' global norm to this; 0 = no clipping.
  # AdamW's decoupled weight decay (optax.adamw: each step also subtracts the learning rate
  # times this times the parameter), on every parameter; 0 = Adam (the tutorial).
  config.weight_decay = 0.0
  # Evaluate, checkpoint-select and predict with a moving average of the parameters, updated
  # after every step with this decay (train.TrainState); 0 = the parameters themselves.
  config.ema_decay = 0.0
  # Adversarial training (Goodfellow et al. 2015, on word embeddings as Miyato et al. 2017):
  # each step also trains on the batch with the embedded words moved, per review, by this
  # many typical word-vector lengths in the direction that raises its loss most
  # (train.adversarial_perturbation); it costs a second gradient a step. 0 = off.
  config.adversarial_epsilon = 0.0
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_epochs = 3
  config.seed = 7
  config.log_every_steps = 50
  config.checkpoint_every_steps = 0  # 0 = at the end of each epoch only.
  config.keep_checkpoints = 3
  return config


def tutorial_config() -> ml_collections.ConfigDict:
  """The tutorial's plain LSTM trained as the tutorial's Keras trained it: `base_config()`
  with Keras' Adam (optimizer='keras_adam'), the start of the five tutorial configs.

  The tutorial (2016) ran Keras 1/2, whose Adam added epsilon to sqrt(v), as Keras 3's does.
  Its embedding's second moment grew by the square of the summed gradient, as Adam's does
  (keras3_embedding_squares=False): Keras 2's `(1. - beta_1) * g` turned a TensorFlow
  `IndexedSlices` gradient into a dense tensor, duplicates summed, before `K.square`, and
  Theano's gradient of an embedding lookup was dense. Keras 3's per-occurrence squares came
  later and are no part of the tutorial. The base default stays optax's Adam, what every run
  written before this key existed was trained with.
  """
  config = base_config()
  config.optimizer = "keras_adam"
  return config


def from_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, loaded as `--config=<path>` would load it."""
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def bucketed(tutorial_config_file: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config in `tutorial_config_file`, with exact masking and length bucketing.

  The model and its parameters are unchanged. Reviews are padded after their words, padded
  steps leave the LSTM state unchanged, and batches are cut to the next multiple of 50 steps
  above their longest review: at most max_length / 50 = 10 batch shapes, so at most 10
  compilations of each step.
  """
  config = from_file(tutorial_config_file)
  config.name += "_bucketed"
  config.padding = "post"
  config.mask_padding = True
  config.bucket_width = 50
  return config


def tuned_training(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with what experiments/best.py's search settled on besides the model.

  Reviews of up to 800 words, padded after the words, masked and bucketed; Adam 2e-3 with a
  cosine decay over 5 epochs, the gradients' norm clipped at 1, batches of 32, evaluated with a
  moving average of the parameters; 2,500 training reviews kept for validation, and the test
  split evaluated once, on the best epoch on validation.
  """
  config.update(max_length=800, padding="post", mask_padding=True, bucket_width=50,
                learning_rate=2e-3, learning_rate_schedule="cosine", gradient_clip_norm=1.0,
                batch_size=32, ema_decay=0.998, num_epochs=5, validation_size=2500,
                evaluate_test="best_epoch")
  return config


def _check(ok: bool, key: str, value, allowed: str) -> None:
  if not ok:
    raise ConfigError(f"config.{key}={value!r} is invalid: {allowed}.")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad value, before any work is done."""
  for key in ("top_words", "max_length", "embedding_dim", "batch_size",
              "eval_batch_size", "num_epochs", "log_every_steps", "keep_checkpoints",
              "conv_kernel_size", "pool_size", "lstm_layers"):
    value = config[key]
    _check(isinstance(value, int) and value >= 1, key, value, "use an integer >= 1")
  _check(config.top_words >= 4, "top_words", config.top_words,
         "use >= 4 (ids 0-2 are reserved for padding, start and out-of-vocabulary)")
  for key in ("max_train_examples", "max_eval_examples", "validation_size", "conv_filters",
              "checkpoint_every_steps", "bucket_width", "ngram_order", "lstm_units",
              "embedding_top_words"):
    value = config[key]
    _check(isinstance(value, int) and value >= 0, key, value, "use an integer >= 0")
  for key in ("embedding_dropout", "word_dropout", "lstm_dropout", "lstm_recurrent_dropout",
              "output_dropout"):
    value = config[key]
    _check(0.0 <= value < 1.0, key, value, "use a rate in [0, 1)")
  for key in ("padding", "truncating"):
    _check(config[key] in PAD_SIDES, key, config[key], "use 'pre' or 'post'")
  _check(config.compute_dtype in ("float32", "bfloat16"), "compute_dtype", config.compute_dtype,
         "use 'float32' or 'bfloat16'")
  _check(config.learning_rate > 0, "learning_rate", config.learning_rate, "use a value > 0")
  _check(config.adam_epsilon > 0, "adam_epsilon", config.adam_epsilon, "use a value > 0")
  _check(config.optimizer in OPTIMIZERS, "optimizer", config.optimizer,
         f"use one of {', '.join(map(repr, OPTIMIZERS))}")
  _check(config.optimizer == "adam" or not config.weight_decay, "weight_decay",
         config.weight_decay, "weight decay needs optimizer='adam' (optax's AdamW); use 0")
  if config.keras3_embedding_squares:
    _check(config.optimizer == "keras_adam", "keras3_embedding_squares",
           config.keras3_embedding_squares, "it is a quirk of Keras' Adam; set "
           "optimizer='keras_adam', or use False")
    for key in ("adversarial_epsilon", "gradient_clip_norm", "ngram_order"):
      _check(not config[key], "keras3_embedding_squares", config.keras3_embedding_squares,
             f"it is not implemented with {key}={config[key]!r}; use False, or {key}=0")
    _check(config.lstm_units > 0, "keras3_embedding_squares", config.keras3_embedding_squares,
           "lstm_units=0 has no word embedding; use False")
  _check(config.learning_rate_schedule in ("constant", "cosine"), "learning_rate_schedule",
         config.learning_rate_schedule, "use 'constant' or 'cosine'")
  _check(config.weight_decay >= 0, "weight_decay", config.weight_decay,
         "use a value >= 0; 0 = no weight decay")
  _check(0.0 <= config.ema_decay < 1.0, "ema_decay", config.ema_decay,
         "use a decay in [0, 1), e.g. 0.999; 0 = no moving average")
  _check(config.adversarial_epsilon >= 0, "adversarial_epsilon", config.adversarial_epsilon,
         "use a value >= 0, e.g. 0.15; 0 = no adversarial training")
  _check(not config.adversarial_epsilon or config.lstm_units, "adversarial_epsilon",
         config.adversarial_epsilon, "it perturbs the LSTM's word embeddings, and lstm_units=0 "
         "has none; use 0")
  _check(config.gradient_clip_norm >= 0, "gradient_clip_norm", config.gradient_clip_norm,
         "use a norm > 0, or 0 for no clipping")
  _check(config.pooling in POOLINGS, "pooling", config.pooling,
         f"use one of {', '.join(map(repr, POOLINGS))}")
  _check(bool(config.dataset), "dataset", config.dataset, "name a TFDS dataset")
  _check(config.evaluate_test in TEST_EVALUATIONS, "evaluate_test", config.evaluate_test,
         f"use one of {', '.join(map(repr, TEST_EVALUATIONS))}")
  if config.evaluate_test != "every_epoch":
    _check(config.validation_size > 0, "evaluate_test", config.evaluate_test,
           "it needs validation_size > 0 (epochs are then judged on validation)")
  _check(isinstance(config.validation_groups, str), "validation_groups",
         config.validation_groups, "give a file path, or '' for random examples")
  _check(not config.validation_groups or config.validation_size > 0, "validation_groups",
         config.validation_groups, "it needs validation_size > 0")
  if config.mask_padding:
    _check(config.padding == "post", "padding", config.padding,
           "use 'post' with mask_padding=True (masking expects the words first)")
  if config.bucket_width:
    _check(config.mask_padding, "bucket_width", config.bucket_width,
           "bucketing needs mask_padding=True, else padding would change the results")
  _check(config.lstm_units or config.ngram_order, "lstm_units", config.lstm_units,
         "use an integer >= 1, or set ngram_order >= 1 for a bag of n-grams alone")
  _check(config.embedding_top_words in range(4, config.top_words + 1)
         or config.embedding_top_words == 0, "embedding_top_words", config.embedding_top_words,
         f"use 4 to top_words={config.top_words}, or 0 for all of them")
  _check(config.ngram_bag in NGRAM_BAGS, "ngram_bag", config.ngram_bag,
         f"use one of {', '.join(map(repr, NGRAM_BAGS))}")
  if config.ngram_order:
    _check(isinstance(config.ngram_dim, int) and config.ngram_dim >= 1, "ngram_dim",
           config.ngram_dim, "use an integer >= 1")
    shared = 1 if config.ngram_order > 1 else 0
    _check(isinstance(config.ngram_buckets, int)
           and config.ngram_buckets >= config.top_words + shared, "ngram_buckets",
           config.ngram_buckets, f"use at least top_words={config.top_words} rows, plus at "
           "least one for the n-grams of two or more words")
  if config.conv_filters:
    _check(config.max_length >= config.pool_size, "pool_size", config.pool_size,
           f"use at most max_length={config.max_length}")
  _check(config.task in TASKS, "task", config.task, f"use one of {', '.join(map(repr, TASKS))}")
  _check(isinstance(config.init_from, str), "init_from", config.init_from,
         "give a language model run's workdir, or '' for none")
  if config.init_from:
    _check(config.lstm_units and not config.conv_filters, "init_from", config.init_from,
           "a language model's LSTM reads embedded words: it needs lstm_units >= 1 and "
           "conv_filters=0")
  if config.task == "language_model":
    _validate_language_model(config)


def lm_splits(config: ml_collections.ConfigDict) -> list[str]:
  """The splits whose text the language model reads."""
  return [s.strip() for s in config.lm_splits.split(",") if s.strip()]


# What a language model does not have, as (key, value it must keep, why).
_NOT_IN_LANGUAGE_MODELS = (
    ("conv_filters", 0, "its LSTM reads the embedded words"),
    ("ngram_order", 0, "a bag of n-grams predicts no words"),
    ("adversarial_epsilon", 0.0, "adversarial training needs labels"),
    ("keras3_embedding_squares", False, "it is not implemented for language models"),
    ("embedding_top_words", 0, "its embedding reads every word it predicts"),
    ("init_from", "", "it starts from scratch"),
)


def _validate_language_model(config: ml_collections.ConfigDict) -> None:
  for key, value, why in _NOT_IN_LANGUAGE_MODELS:
    _check(config[key] == value, key, config[key], f"with task='language_model' use {value!r}: "
           f"{why}")
  _check(config.lstm_units >= 1, "lstm_units", config.lstm_units,
         "a language model needs an LSTM; use an integer >= 1")
  _check(isinstance(config.lm_sampled_words, int) and 0 <= config.lm_sampled_words
         < config.top_words, "lm_sampled_words", config.lm_sampled_words,
         f"use an integer from 0 (the full softmax) to top_words - 1 = {config.top_words - 1}")
  _check(config.padding == "post" and config.mask_padding, "padding", config.padding,
         "a language model reads reviews words first: set padding='post' and mask_padding=True")
  _check(not config.bidirectional or config.lstm_layers == 1, "bidirectional",
         config.bidirectional, "a bidirectional language model has one layer (a second would "
         "let each direction see the words it predicts); use lstm_layers=1")
  splits = lm_splits(config)
  _check(bool(splits), "lm_splits", config.lm_splits, "name the splits to read, e.g. "
         "'train,unsupervised'")
  _check(config.eval_split not in splits, "lm_splits", config.lm_splits,
         f"the evaluation split {config.eval_split!r} is for the final evaluation only")
  _check(config.validation_size > 0, "validation_size", config.validation_size,
         "a language model holds out that many reviews to measure its perplexity; use >= 1")
  _check(config.evaluate_test == "never", "evaluate_test", config.evaluate_test,
         "a language model is never evaluated on the test split; use 'never'")
