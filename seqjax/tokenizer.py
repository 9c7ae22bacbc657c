"""Text to integer ids, the way Keras' `imdb.load_data` + `pad_sequences` lay them out.

Ids: 0 = padding, 1 = start of review, 2 = out of vocabulary; the word of frequency rank r
(0 = most frequent in the training texts) gets id r + 3, and only ids below `top_words` are
kept, so `top_words` counts the three reserved ids as Keras does.
"""

import collections
import json
import re
from collections.abc import Iterable, Sequence

import numpy as np

from seqjax import files
from seqjax.errors import DataError

PAD_ID, START_ID, OOV_ID = 0, 1, 2
NUM_RESERVED = 3
VOCAB_FORMAT = "seqjax-vocabulary-v1"

_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# Letters and digits of any script, with apostrophes kept inside a word ("don't", "rock'n'roll").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str | bytes) -> list[str]:
  """Lowercase word tokens; `<br />` separates words and is not one itself."""
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  return _WORD.findall(_HTML_BREAK.sub(" ", text).lower())


class Vocabulary:
  """The `top_words - 3` most frequent training words, most frequent first."""

  def __init__(self, words: Sequence[str], top_words: int):
    if len(words) > top_words - NUM_RESERVED:
      raise ValueError(f"{len(words)} words do not fit in top_words={top_words}.")
    self.words = list(words)
    self.top_words = top_words
    self._ids = {word: i + NUM_RESERVED for i, word in enumerate(self.words)}

  @classmethod
  def build(cls, token_lists: Iterable[Sequence[str]], top_words: int) -> "Vocabulary":
    """Ranks words by count over `token_lists`; ties go alphabetically, so ranks are stable."""
    counts = collections.Counter()
    for tokens in token_lists:
      counts.update(tokens)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return cls([word for word, _ in ranked[:top_words - NUM_RESERVED]], top_words)

  def encode(self, tokens: Sequence[str]) -> list[int]:
    """[START_ID, id of each token], with OOV_ID for words outside the vocabulary."""
    return [START_ID] + [self._ids.get(token, OOV_ID) for token in tokens]

  def save(self, path: str) -> None:
    """Writes plain JSON (format, top_words, words in id order from id 3) atomically."""
    with files.atomic_open(path, encoding="utf-8") as f:
      json.dump({"format": VOCAB_FORMAT, "top_words": self.top_words, "words": self.words},
                f, ensure_ascii=False)

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
      if data.get("format") != VOCAB_FORMAT:
        raise ValueError(f"format is {data.get('format')!r}, expected {VOCAB_FORMAT!r}")
      return cls(data["words"], data["top_words"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      raise DataError(f"Cannot read the vocabulary {path}: {e}. "
                      "Point to the workdir of a finished seqjax run.") from e


def pad_sequences(sequences: Sequence[Sequence[int]], max_length: int, padding: str = "pre",
                  truncating: str = "pre") -> np.ndarray:
  """Keras' `pad_sequences`: an int32 (N, max_length) array, padded with PAD_ID.

  `truncating='pre'` drops the start of a long sequence (its START_ID too, as in Keras);
  `padding='pre'` puts the padding before a short one.
  """
  out = np.full((len(sequences), max_length), PAD_ID, dtype=np.int32)
  for i, seq in enumerate(sequences):
    seq = seq[-max_length:] if truncating == "pre" else seq[:max_length]
    if len(seq) == 0:
      continue
    if padding == "pre":
      out[i, -len(seq):] = seq
    else:
      out[i, :len(seq)] = seq
  return out
