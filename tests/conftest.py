"""Shared fixtures: a tiny TFDS dataset the tests write themselves, and the path of real IMDB."""

import fcntl
import json
import os
import pathlib
import pty
import struct
import subprocess
import sys
import termios

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import seqjax
from seqjax import config as config_lib

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
REAL_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "tfds"


def load_config(name: str):
  """`get_config()` of configs/<name>.py."""
  return config_lib.from_file(PROJECT_ROOT / "configs" / f"{name}.py")


POSITIVE = ["great", "superb", "moving", "brilliant"]
NEGATIVE = ["awful", "boring", "dull", "terrible"]
FILLER = ["the", "film", "a", "plot", "actor", "scene", "story", "and", "of", "was"]


def synthetic_review(rng: np.random.Generator, label: int) -> str:
  """A review whose sentiment word comes first, far from the end, then filler words."""
  word = rng.choice(POSITIVE if label else NEGATIVE)
  filler = " ".join(rng.choice(FILLER, size=int(rng.integers(8, 16))))
  return f"{word.capitalize()}! {filler}<br /><br />{filler}."


class TinyReviews(tfds.core.GeneratorBasedBuilder):
  """IMDB's layout (text, label; train, test and unsupervised splits) with synthetic reviews;
  the unsupervised ones have label -1, as IMDB's."""

  VERSION = tfds.core.Version("1.0.0")
  # 37: not a multiple of any batch size used.
  SPLIT_SIZES = {"train": 200, "test": 37, "unsupervised": 120}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "text": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=["neg", "pos"]),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n) for split, n in self.SPLIT_SIZES.items()}

  def _generate_examples(self, split: str, num_examples: int):
    rng = np.random.default_rng({"train": 0, "test": 1, "unsupervised": 2}[split])
    for i in range(num_examples):
      label = int(rng.integers(2))
      yield i, {"text": synthetic_review(rng, label),
                "label": -1 if split == "unsupervised" else label}


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding the prepared `tiny_reviews` dataset (ArrayRecord)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  TinyReviews(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir)


def tiny_overrides(data_dir, cache_dir) -> dict:
  """Config values for a model small enough to train in seconds on `tiny_reviews`."""
  return dict(dataset="tiny_reviews", data_dir=str(data_dir), cache_dir=str(cache_dir),
              download=False, top_words=30, max_length=40, embedding_dim=8, lstm_units=8,
              batch_size=16, eval_batch_size=16, num_epochs=2, learning_rate=0.01)


def run_on_a_terminal(args: list[str]) -> str:
  """`python *args` from the project root with stderr on a pseudo-terminal; what it wrote
  there (it must succeed)."""
  main_fd, terminal_fd = pty.openpty()
  # 50 rows of 160 columns: a new pseudo-terminal has no size, and a bar would get no width.
  fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
  process = subprocess.Popen([sys.executable, *args], cwd=PROJECT_ROOT,
                             stdout=subprocess.DEVNULL, stderr=terminal_fd)
  os.close(terminal_fd)
  output = []
  while True:  # Read as it comes, so that the child never blocks on a full terminal.
    try:
      data = os.read(main_fd, 65536)
    except OSError:  # EIO: the child closed the terminal.
      break
    if not data:
      break
    output.append(data)
  os.close(main_fd)
  text = b"".join(output).decode(errors="replace")
  assert process.wait(timeout=600) == 0, text[-2000:]
  return text


TIMING_KEYS = ("train_seconds", "eval_seconds", "train_examples", "train_examples_per_second")


def comparable(results: dict) -> dict:
  """results.json without wall-clock figures."""
  return {k: ([{m: v for m, v in e.items() if m not in TIMING_KEYS} for e in v]
              if k == "epochs" else v)
          for k, v in results.items() if k not in TIMING_KEYS}


def params_of(workdir):
  return jax.tree_util.tree_leaves(seqjax.load(str(workdir)).params)


def assert_same_run(workdir, reference):
  """The same results (but for timings) and bitwise the same parameters."""
  results = json.loads((workdir / "results.json").read_text())
  want = json.loads((reference / "results.json").read_text())
  assert comparable(results) == comparable(want)
  for got, expected in zip(params_of(workdir), params_of(reference), strict=True):
    np.testing.assert_array_equal(got, expected)  # Bitwise.
