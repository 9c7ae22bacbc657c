"""IMDB (or any TFDS text dataset with a binary label) as padded integer arrays, and batches.

Texts are read with `tfds.data_source` (ArrayRecord, no TensorFlow needed), tokenized, ranked
into a vocabulary on the training examples only, encoded and padded. The result is cached as
`.npz`, keyed by everything that changes it, so a second run skips tokenization.
"""

import dataclasses
import functools
import hashlib
import json
import os
import socket
import urllib.parse
import zipfile
from collections.abc import Iterable, Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from seqjax import config as config_lib
from seqjax import files, tokenizer
from seqjax.errors import DataError

# Bump when tokenization or encoding changes, so that old caches are not reused.
ENCODING_VERSION = 1
# The validation examples are a fixed random subset of the training split, the same for
# every training seed, so that runs with different seeds are chosen on the same data.
VALIDATION_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Split:
  """Encoded examples: inputs (N, max_length) int32 ids, labels (N,) int32 in {0, 1}."""

  inputs: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def lengths(self) -> np.ndarray:
    """(N,) ids per example that are not padding."""
    return np.sum(self.inputs != tokenizer.PAD_ID, axis=1)

  def order(self, bucketed: bool) -> np.ndarray:
    """The evaluation order: as stored, or by length so that batches can be cut short."""
    return np.argsort(self.lengths(), kind="stable") if bucketed else np.arange(len(self))


@dataclasses.dataclass(frozen=True)
class Data:
  train: Split
  validation: Split | None
  test: Split
  vocabulary: tokenizer.Vocabulary


def resolve_data_dir(data_dir: str) -> str:
  """`data_dir`, else $TFDS_DATA_DIR, else TFDS' default folder."""
  return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR")
                            or tfds.core.constants.DATA_DIR)


def _cache_dir(config: ml_collections.ConfigDict) -> str:
  root = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  return os.path.expanduser(config.cache_dir or os.path.join(root, "seqjax"))


def _open_sources(config: ml_collections.ConfigDict) -> dict:
  """The dataset's random-access splits; prepares them first only where allowed and possible."""
  data_dir = resolve_data_dir(config.data_dir)
  how_to = (f"To fix: point --config.data_dir or $TFDS_DATA_DIR at a folder that holds a "
            f"prepared copy (<dir>/{config.dataset}/...), or run with internet access and "
            "--config.download=True (the default) so that TFDS downloads and prepares it.")
  try:
    builder = tfds.builder(config.dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"TFDS has no dataset {config.dataset!r} and none is prepared in "
                    f"{data_dir}. Check --config.dataset.") from e
  if not builder.is_prepared():
    if not config.download:
      raise DataError(f"{config.dataset} is not prepared in {data_dir} ({builder.data_dir} has "
                      f"no dataset_info.json) and --config.download=False. {how_to}")
    logging.info("%s is not in %s: downloading and preparing it.", config.dataset, data_dir)
    _check_reachable(builder.url_infos or {}, f"{config.dataset} is not prepared in {data_dir}",
                     how_to)
    try:
      builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # Network and TFDS failures alike: say where and how, then stop.
      raise DataError(f"{config.dataset} is not prepared in {data_dir} and preparing it failed "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                      f"{how_to}") from e
  try:
    sources = tfds.data_source(config.dataset, data_dir=data_dir, download=False)
  except Exception as e:
    raise DataError(f"Cannot read {config.dataset} from {data_dir}: {e}. The copy must be "
                    "prepared with file_format='array_record'.") from e
  for split in _source_splits(config):
    if split not in sources:
      raise DataError(f"{config.dataset} in {data_dir} has no split {split!r}; it has "
                      f"{sorted(sources)}.")
  return sources


def _source_splits(config: ml_collections.ConfigDict) -> list[str]:
  """The dataset splits a run reads: a language model never reads the evaluation split."""
  if config.task == "language_model":
    return config_lib.lm_splits(config)
  return [config.train_split, config.eval_split]


def _check_reachable(urls, problem: str, how_to: str) -> None:
  """Fails at once when a download host cannot be reached (TFDS would retry for minutes)."""
  for url in urls:
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
      socket.create_connection((parsed.hostname, port), timeout=10).close()
    except OSError as e:
      raise DataError(f"{problem}, and its download host {parsed.hostname} cannot be reached "
                      f"({e}). {how_to}") from e


def _read(source, limit: int, labelled: bool = True) -> tuple[list[list[str]], np.ndarray]:
  """Tokens and labels of the first `limit` examples (all if 0); unread labels are zeros."""
  n = len(source) if not limit else min(limit, len(source))
  records = source.__getitems__(list(range(n)))
  tokens = [tokenizer.tokenize(r["text"]) for r in records]
  if not labelled:
    return tokens, np.zeros(n, np.int32)
  labels = np.array([r["label"] for r in records], dtype=np.int32)
  if np.any((labels != 0) & (labels != 1)):
    raise DataError(f"Labels must be 0 or 1; found {sorted(set(labels.tolist()))}.")
  return tokens, labels


def _read_groups_file(path: str) -> str:
  try:
    with open(path) as f:
      return f.read()
  except OSError as e:
    raise DataError(f"Cannot read validation_groups={path!r} ({e.strerror}). Give a text file "
                    "with one group id per training example, or '' for a random "
                    "validation split.") from e


def _read_groups(path: str, num_examples: int) -> np.ndarray:
  """(num_examples,) group ids, one per line of `path`."""
  groups = np.array(_read_groups_file(path).splitlines())
  if len(groups) != num_examples:
    raise DataError(f"validation_groups={path!r} has {len(groups)} lines but the training "
                    f"split has {num_examples} examples: it needs one group id per training "
                    "example, in the dataset's order.")
  return groups


def validation_examples(num_examples: int, size: int, groups_file: str = "") -> np.ndarray:
  """Sorted indices of the training examples held out for validation.

  `size` examples at random; or, with `groups_file`, whole groups at random until there are
  `size` examples or more, so that no group is on both sides. Fixed by VALIDATION_SPLIT_SEED.
  """
  rng = np.random.default_rng(VALIDATION_SPLIT_SEED)
  if not groups_file:
    return np.sort(rng.permutation(num_examples)[:size])
  _, group_of = np.unique(_read_groups(groups_file, num_examples), return_inverse=True)
  order = rng.permutation(group_of.max() + 1)
  needed = int(np.searchsorted(np.cumsum(np.bincount(group_of)[order]), size)) + 1
  held_out = np.flatnonzero(np.isin(group_of, order[:needed]))
  if len(held_out) == num_examples:
    raise DataError(f"validation_size={size} takes every group of {groups_file}, leaving no "
                    "training examples; use a smaller value.")
  return held_out


def _cache_key(config: ml_collections.ConfigDict, data_dir: str,
               vocabulary: tokenizer.Vocabulary | None) -> str:
  keyed = {k: config[k] for k in ("dataset", "train_split", "eval_split", "top_words",
                                  "max_length", "padding", "truncating", "max_train_examples",
                                  "max_eval_examples", "validation_size")}
  keyed.update(data_dir=os.path.abspath(data_dir), encoding_version=ENCODING_VERSION,
               validation_split_seed=VALIDATION_SPLIT_SEED)
  if config.task == "language_model":
    keyed.update(task=config.task, lm_splits=config_lib.lm_splits(config))
  if vocabulary is not None:
    keyed["vocabulary"] = hashlib.sha256("\n".join(vocabulary.words).encode()).hexdigest()
  if config.validation_size and config.validation_groups:
    keyed["validation_groups"] = hashlib.sha256(
        _read_groups_file(config.validation_groups).encode()).hexdigest()
  return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:20]


def encode_tokens(config: ml_collections.ConfigDict, vocabulary: tokenizer.Vocabulary,
                  token_lists: Iterable[Sequence[str]]) -> np.ndarray:
  """(N, max_length) int32 ids of N token lists, cut and padded as `config` says."""
  return tokenizer.pad_sequences([vocabulary.encode(t) for t in token_lists],
                                 config.max_length, config.padding, config.truncating)


def _encode(config: ml_collections.ConfigDict, sources: dict,
            vocabulary: tokenizer.Vocabulary | None) -> dict[str, np.ndarray]:
  """The splits, encoded with `vocabulary`, else with one ranked on the training examples.

  A classifier's training examples are its train split's; a language model's are the reviews
  of `lm_splits`, labels unread (zeros), and its test split is empty: the evaluation split's
  text is never read. Either holds `validation_size` of them out for validation.
  """
  if config.task == "language_model":
    train_tokens = [t for split in config_lib.lm_splits(config)
                    for t in _read(sources[split], 0, labelled=False)[0]]
    train_labels = np.zeros(len(train_tokens), np.int32)
    test_tokens, test_labels = [], np.zeros(0, np.int32)
  else:
    train_tokens, train_labels = _read(sources[config.train_split], 0)
    test_tokens, test_labels = _read(sources[config.eval_split], config.max_eval_examples)
  validation_index = np.zeros(0, dtype=np.int64)
  if config.validation_size:
    if config.validation_size >= len(train_labels):
      raise DataError(f"validation_size={config.validation_size} leaves no training examples "
                      f"out of {len(train_labels)}; use a smaller value.")
    validation_index = validation_examples(len(train_labels), config.validation_size,
                                           config.validation_groups)
  train_index = np.setdiff1d(np.arange(len(train_labels)), validation_index)
  if config.max_train_examples:
    train_index = train_index[:config.max_train_examples]

  if vocabulary is None:
    vocabulary = tokenizer.Vocabulary.build((train_tokens[i] for i in train_index),
                                            config.top_words)

  encode = functools.partial(encode_tokens, config, vocabulary)
  return dict(
      train_inputs=encode(train_tokens[i] for i in train_index),
      train_labels=train_labels[train_index],
      validation_inputs=encode(train_tokens[i] for i in validation_index),
      validation_labels=train_labels[validation_index],
      test_inputs=encode(test_tokens),
      test_labels=test_labels,
      words=np.array(vocabulary.words, dtype=str),
  )


def _load_cache(path: str, config: ml_collections.ConfigDict) -> dict[str, np.ndarray] | None:
  """The cached arrays, or None if the file is missing, corrupt or inconsistent."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    for split in ("train", "validation", "test"):
      inputs, labels = arrays[f"{split}_inputs"], arrays[f"{split}_labels"]
      if inputs.shape != (len(labels), config.max_length) or inputs.dtype != np.int32:
        raise ValueError(f"{split} inputs have shape {inputs.shape}, dtype {inputs.dtype}")
      if inputs.size and (inputs.min() < 0 or inputs.max() >= config.top_words):
        raise ValueError(f"{split} ids are outside [0, {config.top_words})")
    return arrays
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    logging.warning("Ignoring the corrupt cache %s (%s); rebuilding it.", path, e)
    return None


def _save_cache(path: str, arrays: dict[str, np.ndarray]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with files.atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


def load_data(config: ml_collections.ConfigDict,
              vocabulary: tokenizer.Vocabulary | None = None) -> Data:
  """Train, validation (if `validation_size`) and test splits, encoded; cached on disk.

  Words are ranked on the training examples, unless `vocabulary` is given (a pretrained
  model's). A language model's splits are its text, and its test split is empty (`_encode`).
  """
  data_dir = resolve_data_dir(config.data_dir)
  key = _cache_key(config, data_dir, vocabulary)
  path = os.path.join(_cache_dir(config), f"{config.dataset}-{key}.npz")
  arrays = _load_cache(path, config)
  if arrays is None:
    sources = _open_sources(config)
    logging.info("Tokenizing %s from %s (cached afterwards in %s).", config.dataset, data_dir,
                 path)
    arrays = _encode(config, sources, vocabulary)
    try:
      _save_cache(path, arrays)
    except OSError as e:
      logging.warning("Could not write the cache %s (%s); continuing without it.", path, e)
  else:
    logging.info("Read the encoded %s from the cache %s.", config.dataset, path)

  def split(name: str) -> Split:
    return Split(arrays[f"{name}_inputs"], arrays[f"{name}_labels"])

  return Data(train=split("train"),
              validation=split("validation") if config.validation_size else None,
              test=split("test"),
              vocabulary=tokenizer.Vocabulary(arrays["words"].tolist(), config.top_words))


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The training order of an epoch: a pure function of (seed, epoch), so runs resume exactly."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def bucketed_epoch_order(lengths: np.ndarray, batch_size: int, seed: int,
                         epoch: int) -> np.ndarray:
  """An epoch order whose consecutive batches hold reviews of similar length.

  The shuffled order is cut into windows of 50 batches, each sorted by length and cut into
  batches; the full batches are then shuffled (a partial one stays last). A pure function of
  (seed, epoch), like `epoch_order`.
  """
  order = epoch_order(len(lengths), seed, epoch)
  window = 50 * batch_size
  order = np.concatenate([w[np.argsort(lengths[w], kind="stable")]
                          for w in np.split(order, range(window, len(order), window))])
  full = len(order) // batch_size
  shuffled = np.random.default_rng([seed, epoch, 1]).permutation(full)
  return np.concatenate([order[:full * batch_size].reshape(full, batch_size)[shuffled].ravel(),
                         order[full * batch_size:]])


def train_order(split: Split, batch_size: int, seed: int, epoch: int,
                bucketed: bool) -> np.ndarray:
  """The epoch's order: `bucketed_epoch_order` for bucketed batches, else `epoch_order`."""
  if bucketed:
    return bucketed_epoch_order(split.lengths(), batch_size, seed, epoch)
  return epoch_order(len(split), seed, epoch)


def batches(split: Split, batch_size: int, order: np.ndarray | None = None,
            bucket_width: int = 0) -> Iterator[dict]:
  """Batches of `batch_size` in `order`; the last one padded, with `mask` 0 on the padding.

  Every example is counted exactly once. Yields {'inputs': (B, T) int32, 'labels': (B,) int32,
  'mask': (B,) float32}. T is the full length, so one compiled step serves all batches; with
  `bucket_width` (for masked models, words first), T is cut to the next multiple of
  bucket_width above the batch's longest review, so only a few shapes occur.
  """
  order = np.arange(len(split)) if order is None else order
  full_length = split.inputs.shape[1]
  lengths = split.lengths() if bucket_width else None
  for start in range(0, len(order), batch_size):
    index = order[start:start + batch_size]
    pad = batch_size - len(index)
    mask = np.concatenate([np.ones(len(index), np.float32), np.zeros(pad, np.float32)])
    index = np.concatenate([index, np.full(pad, index[0], index.dtype)])
    inputs = split.inputs[index]
    if bucket_width:
      longest = int(lengths[index].max())
      inputs = inputs[:, :min(full_length, bucket_width * max(1, -(-longest // bucket_width)))]
    yield {"inputs": inputs, "labels": split.labels[index], "mask": mask}


def num_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)
