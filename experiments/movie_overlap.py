"""How many validation reviews are of movies the training reviews also cover.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/movie_overlap.py \
      --archive=../shared/data/imdb/aclImdb_v1.tar.gz --validation_size=2500

IMDB's train and test splits are of different movies. seqjax's validation split is a random
subset of the training split, so most of its reviews are of movies that the remaining training
reviews also cover. The TFDS dataset has no movie ids; the original archive has one URL per
review (`urls_{pos,neg}.txt`, line i for the file `<i>_<rating>.txt`), matched here to the TFDS
reviews by their text, which is byte-identical.
"""

import re
import tarfile

from absl import app, flags
import numpy as np
import tensorflow_datasets as tfds

from seqjax import input_pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string("archive", "../shared/data/imdb/aclImdb_v1.tar.gz", "aclImdb_v1.tar.gz.")
flags.DEFINE_integer("validation_size", 2500, "As config.validation_size.")

REVIEW = re.compile(r"aclImdb/(train|test)/(pos|neg)/(\d+)_\d+\.txt$")


def movies_by_text(archive: str) -> dict[tuple[str, bytes], str]:
  """(split, review text) -> IMDB title id, e.g. ('train', b'...') -> 'tt0064354'."""
  with tarfile.open(archive) as tar:
    members = {m.name: m for m in tar.getmembers()}
    urls = {(split, label): tar.extractfile(members[f"aclImdb/{split}/urls_{label}.txt"])
            .read().decode().split()
            for split in ("train", "test") for label in ("pos", "neg")}
    found = {}
    for name, member in members.items():
      match = REVIEW.match(name)
      if match:
        split, label, index = match[1], match[2], int(match[3])
        title = re.search(r"title/(tt\d+)", urls[(split, label)][index])[1]
        found[(split, tar.extractfile(member).read())] = title
  return found


def main(argv):
  del argv
  movie = movies_by_text(FLAGS.archive)
  sources = tfds.data_source("imdb_reviews", download=False)
  train = [movie[("train", sources["train"][i]["text"])] for i in range(len(sources["train"]))]
  test = {movie[("test", r["text"])] for r in sources["test"]}
  order = np.random.default_rng(input_pipeline.VALIDATION_SPLIT_SEED).permutation(len(train))
  validation = set(order[:FLAGS.validation_size].tolist())
  rest = {m for i, m in enumerate(train) if i not in validation}
  seen = sum(train[i] in rest for i in validation)
  print(f"Movies: {len(set(train)):,} in train, {len(test):,} in test, "
        f"{len(set(train) & test)} in both.")
  print(f"Validation reviews whose movie the other {len(train) - len(validation):,} training "
        f"reviews also cover: {seen:,} of {len(validation):,} "
        f"({100 * seen / len(validation):.1f}%).")


if __name__ == "__main__":
  app.run(main)
