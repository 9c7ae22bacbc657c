"""Loading a TFDS dataset into padded arrays: splits, vocabulary, cache, batches, errors."""

import glob
import os

import numpy as np
import pytest

from conftest import FILLER, NEGATIVE, POSITIVE, TinyReviews, tiny_overrides
from seqjax import config as config_lib
from seqjax import input_pipeline, tokenizer
from seqjax.errors import DataError


def make_config(tiny_data_dir, tmp_path, **overrides):
  config = config_lib.base_config()
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"))
  config.update(overrides)
  return config


def test_loads_every_example_with_keras_ids(tiny_data_dir, tmp_path):
  data = input_pipeline.load_data(make_config(tiny_data_dir, tmp_path))
  assert len(data.train) == TinyReviews.SPLIT_SIZES["train"]
  assert len(data.test) == TinyReviews.SPLIT_SIZES["test"]
  assert data.validation is None
  assert data.train.inputs.shape == (200, 40) and data.train.inputs.dtype == np.int32
  assert set(np.unique(data.train.labels)) == {0, 1}
  assert data.train.inputs.max() < 30 and data.test.inputs.max() < 30
  # 'pre' padding: zeros, then the start id, then the words.
  first = data.train.inputs[0]
  start = np.argmax(first != tokenizer.PAD_ID)
  assert first[start] == tokenizer.START_ID and np.all(first[:start] == tokenizer.PAD_ID)
  # Filler words are the most frequent; `<br />` is markup, not a word.
  assert set(data.vocabulary.words[:len(FILLER)]) == set(FILLER)
  assert set(data.vocabulary.words) == set(FILLER + POSITIVE + NEGATIVE)


def test_vocabulary_comes_from_training_examples_only(tiny_data_dir, tmp_path):
  data = input_pipeline.load_data(make_config(tiny_data_dir, tmp_path, top_words=5000,
                                              validation_size=50))
  assert len(data.train) == 150 and len(data.validation) == 50
  train_ids = set(np.unique(data.train.inputs).tolist())
  # Every word in the vocabulary occurs in the training examples.
  assert train_ids >= set(range(3, 3 + len(data.vocabulary.words)))


def test_random_validation_split_is_the_one_earlier_runs_were_chosen_on():
  expected = np.sort(np.random.default_rng(0).permutation(1000)[:100])
  np.testing.assert_array_equal(input_pipeline.validation_examples(1000, 100), expected)


def test_grouped_validation_split_holds_out_whole_groups(tmp_path):
  groups = np.random.default_rng(1).integers(0, 60, 1000).astype(str)
  (tmp_path / "groups.txt").write_text("\n".join(groups) + "\n")
  held_out = input_pipeline.validation_examples(1000, 100, str(tmp_path / "groups.txt"))
  assert len(held_out) >= 100 and len(held_out) < 100 + 40  # Groups hold ~17 examples.
  kept = np.setdiff1d(np.arange(1000), held_out)
  assert not set(groups[held_out]) & set(groups[kept])
  # The same split every time.
  np.testing.assert_array_equal(
      held_out, input_pipeline.validation_examples(1000, 100, str(tmp_path / "groups.txt")))


def test_grouped_validation_split_is_loaded_and_cached_apart(tiny_data_dir, tmp_path):
  groups = tmp_path / "groups.txt"
  groups.write_text("".join(f"movie{i // 10}\n" for i in range(200)))
  random = input_pipeline.load_data(make_config(tiny_data_dir, tmp_path, validation_size=25))
  grouped = input_pipeline.load_data(make_config(tiny_data_dir, tmp_path, validation_size=25,
                                                 validation_groups=str(groups)))
  assert len(random.validation) == 25 and len(grouped.validation) == 30  # 3 groups of 10.
  assert len(grouped.train) == 170
  assert len(glob.glob(str(tmp_path / "cache" / "*.npz"))) == 2


@pytest.mark.parametrize("content, problem", [
    (None, "Cannot read validation_groups"),
    ("a\nb\n", "has 2 lines but the training split has 200 examples"),
])
def test_bad_validation_groups_file_is_a_clear_error(tiny_data_dir, tmp_path, content, problem):
  path = tmp_path / "groups.txt"
  if content is not None:
    path.write_text(content)
  with pytest.raises(DataError, match=problem):
    input_pipeline.load_data(make_config(tiny_data_dir, tmp_path, validation_size=25,
                                         validation_groups=str(path)))


def test_max_examples_limit_the_splits(tiny_data_dir, tmp_path):
  data = input_pipeline.load_data(make_config(tiny_data_dir, tmp_path, max_train_examples=20,
                                              max_eval_examples=7))
  assert len(data.train) == 20 and len(data.test) == 7


def test_second_load_reads_the_cache_without_the_dataset(tiny_data_dir, tmp_path, monkeypatch):
  config = make_config(tiny_data_dir, tmp_path)
  first = input_pipeline.load_data(config)
  monkeypatch.setattr(input_pipeline, "_open_sources",
                      lambda config: pytest.fail("the dataset was read again"))
  second = input_pipeline.load_data(config)
  np.testing.assert_array_equal(first.train.inputs, second.train.inputs)
  assert first.vocabulary.words == second.vocabulary.words


def test_cache_is_keyed_by_what_changes_the_arrays(tiny_data_dir, tmp_path):
  input_pipeline.load_data(make_config(tiny_data_dir, tmp_path))
  data = input_pipeline.load_data(make_config(tiny_data_dir, tmp_path, max_length=12,
                                              padding="post", truncating="post"))
  assert data.train.inputs.shape == (200, 12) and data.train.inputs[0, 0] == tokenizer.START_ID
  assert len(glob.glob(str(tmp_path / "cache" / "*.npz"))) == 2


def test_corrupt_cache_is_rebuilt(tiny_data_dir, tmp_path):
  config = make_config(tiny_data_dir, tmp_path)
  want = input_pipeline.load_data(config)
  (path,) = glob.glob(str(tmp_path / "cache" / "*.npz"))
  with open(path, "r+b") as f:  # Truncate it, as a crash mid-write on another system might.
    f.truncate(os.path.getsize(path) // 2)
  got = input_pipeline.load_data(config)
  np.testing.assert_array_equal(want.test.inputs, got.test.inputs)
  assert np.load(path)["test_inputs"].shape == want.test.inputs.shape  # Rewritten whole.


def test_missing_dataset_says_where_it_looked_and_how_to_fix(tmp_path):
  config = config_lib.base_config()
  config.update(data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"),
                download=False)
  with pytest.raises(DataError) as error:
    input_pipeline.load_data(config)
  message = str(error.value)
  assert str(tmp_path / "empty") in message and "TFDS_DATA_DIR" in message
  assert "--config.download=True" in message


def test_unknown_split_is_a_clear_error(tiny_data_dir, tmp_path):
  with pytest.raises(DataError, match="has no split 'validation'"):
    input_pipeline.load_data(make_config(tiny_data_dir, tmp_path, eval_split="validation"))


def test_batches_cover_each_example_once_with_a_masked_remainder():
  split = input_pipeline.Split(np.arange(37 * 2, dtype=np.int32).reshape(37, 2),
                               np.arange(37, dtype=np.int32) % 2)
  batches = list(input_pipeline.batches(split, 16))
  assert len(batches) == input_pipeline.num_batches(37, 16) == 3
  assert all(b["inputs"].shape == (16, 2) for b in batches)
  masks = np.concatenate([b["mask"] for b in batches])
  seen = np.concatenate([b["inputs"][:, 0] for b in batches])[masks == 1] // 2
  np.testing.assert_array_equal(np.sort(seen), np.arange(37))
  assert masks.sum() == 37


def test_epoch_order_depends_only_on_seed_and_epoch():
  np.testing.assert_array_equal(input_pipeline.epoch_order(100, 7, 2),
                                input_pipeline.epoch_order(100, 7, 2))
  assert not np.array_equal(input_pipeline.epoch_order(100, 7, 1),
                            input_pipeline.epoch_order(100, 7, 2))
  assert not np.array_equal(input_pipeline.epoch_order(100, 7, 1),
                            input_pipeline.epoch_order(100, 8, 1))


def test_bucketed_order_is_a_seeded_permutation_with_batches_of_similar_length():
  lengths = np.random.default_rng(0).integers(1, 500, 1000)
  order = input_pipeline.bucketed_epoch_order(lengths, 16, seed=7, epoch=1)
  np.testing.assert_array_equal(np.sort(order), np.arange(1000))
  np.testing.assert_array_equal(order, input_pipeline.bucketed_epoch_order(lengths, 16, 7, 1))
  assert not np.array_equal(order, input_pipeline.bucketed_epoch_order(lengths, 16, 7, 2))
  spread = lambda o: np.mean([np.ptp(lengths[o[i:i + 16]]) for i in range(0, 992, 16)])
  assert spread(order) < spread(input_pipeline.epoch_order(1000, 7, 1)) / 10


def test_bucketed_batches_are_cut_to_a_few_widths_and_cover_each_example_once():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 101, 300)
  inputs = np.zeros((300, 100), np.int32)
  for row, n in enumerate(lengths):
    inputs[row, :n] = rng.integers(1, 30, n)  # Words first: 'post' padding.
  split = input_pipeline.Split(inputs, np.zeros(300, np.int32))
  order = input_pipeline.bucketed_epoch_order(lengths, 16, 0, 0)
  seen, widths = [], set()
  for batch in input_pipeline.batches(split, 16, order, bucket_width=25):
    width = batch["inputs"].shape[1]
    widths.add(width)
    real = batch["mask"] == 1
    assert width % 25 == 0
    assert np.all(np.sum(batch["inputs"][real] != 0, axis=1) <= width)
    assert np.sum(batch["inputs"][real] != 0, axis=1).max() > width - 25  # Not cut too long.
    seen.append(int(real.sum()))
  assert widths <= {25, 50, 75, 100} and sum(seen) == 300
