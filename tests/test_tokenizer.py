"""Tokenizer, vocabulary and padding on hand-made texts, against Keras' conventions."""

import json

import numpy as np
import pytest

from seqjax import tokenizer
from seqjax.errors import DataError
from seqjax.tokenizer import OOV_ID, PAD_ID, START_ID


def test_tokenize_lowercases_and_drops_br_markup_and_punctuation():
  text = "This movie<br />was GREAT!<br/><BR />Don't miss it... 10/10, 'really'."
  assert tokenizer.tokenize(text) == ["this", "movie", "was", "great", "don't", "miss", "it",
                                      "10", "10", "really"]


def test_tokenize_accepts_utf8_bytes_and_non_ascii_letters():
  assert tokenizer.tokenize("Café déjà vu 映画".encode()) == ["café", "déjà", "vu", "映画"]
  assert tokenizer.tokenize(b"bad \xff bytes") == ["bad", "bytes"]
  assert tokenizer.tokenize("") == []


def test_vocabulary_ranks_by_train_frequency_with_alphabetical_ties():
  vocab = tokenizer.Vocabulary.build([["b", "a", "c", "c"], ["a", "d", "c"]], top_words=6)
  # c: 3, a: 2, then b and d tie at 1 and go alphabetically; top_words=6 keeps 3 words.
  assert vocab.words == ["c", "a", "b"]
  assert vocab.encode(["c", "a", "b", "d", "zzz"]) == [START_ID, 3, 4, 5, OOV_ID, OOV_ID]


def test_every_id_is_below_top_words():
  tokens = [[f"w{i}"] * (100 - i) for i in range(100)]
  vocab = tokenizer.Vocabulary.build(tokens, top_words=10)
  ids = [i for t in tokens for i in vocab.encode(t)]
  assert max(ids) == 9 and len(vocab.words) == 7


def test_vocabulary_round_trips_through_plain_json(tmp_path):
  vocab = tokenizer.Vocabulary.build([["ünïcode", "word", "word"]], top_words=5000)
  path = str(tmp_path / "vocabulary.json")
  vocab.save(path)
  with open(path, encoding="utf-8") as f:
    assert json.load(f)["words"] == ["word", "ünïcode"]
  loaded = tokenizer.Vocabulary.load(path)
  assert loaded.words == vocab.words and loaded.top_words == 5000


@pytest.mark.parametrize("content", ["{not json", '{"format": "other", "words": []}', "[]"])
def test_unreadable_vocabulary_is_a_clear_error(tmp_path, content):
  path = tmp_path / "vocabulary.json"
  path.write_text(content)
  with pytest.raises(DataError, match="Cannot read the vocabulary"):
    tokenizer.Vocabulary.load(str(path))


@pytest.mark.parametrize("padding, truncating, want", [
    ("pre", "pre", [[0, 0, 1, 2], [4, 5, 6, 7]]),
    ("post", "pre", [[1, 2, 0, 0], [4, 5, 6, 7]]),
    ("pre", "post", [[0, 0, 1, 2], [1, 3, 4, 5]]),
    ("post", "post", [[1, 2, 0, 0], [1, 3, 4, 5]]),
])
def test_pad_sequences_sides_match_keras(padding, truncating, want):
  got = tokenizer.pad_sequences([[1, 2], [1, 3, 4, 5, 6, 7]], 4, padding, truncating)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)


def test_pad_sequences_handles_empty_sequences():
  np.testing.assert_array_equal(tokenizer.pad_sequences([[]], 3), [[PAD_ID] * 3])
