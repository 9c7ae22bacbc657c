"""Which movie each IMDB training review is of, for a validation split of held-out movies.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/imdb_movies.py \
      --archive=../shared/data/imdb/aclImdb_v1.tar.gz --output=runs/imdb_train_movies.txt

IMDB's train and test splits are of different movies. A random validation split is not: most
of its reviews are of movies the remaining training reviews also cover. This writes one IMDB
title id per TFDS training review, in the dataset's order, to --output (for
`--config.validation_groups`), and prints how many validation reviews are of movies the other
training reviews cover, for the random split and for the split by movie. The TFDS dataset has
no movie ids; the original archive has one URL per review (`urls_{pos,neg}.txt`, line i for
the file `<i>_<rating>.txt`), matched here to the TFDS reviews by their text, which is
byte-identical.
"""

import os
import re
import tarfile

from absl import app, flags
import numpy as np
import tensorflow_datasets as tfds

from seqjax import files, input_pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string("archive", "../shared/data/imdb/aclImdb_v1.tar.gz", "aclImdb_v1.tar.gz.")
flags.DEFINE_string("output", "runs/imdb_train_movies.txt", "Where to write the movie ids.")
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
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
  with files.atomic_open(FLAGS.output) as f:
    f.write("".join(f"{m}\n" for m in train))
  print(f"Movies: {len(set(train)):,} in train, {len(test):,} in test, "
        f"{len(set(train) & test)} in both. Wrote {FLAGS.output}.")
  for name, groups in (("random", ""), ("by movie", FLAGS.output)):
    held_out = input_pipeline.validation_examples(len(train), FLAGS.validation_size, groups)
    rest = set(np.delete(np.array(train), held_out))
    seen = sum(train[i] in rest for i in held_out)
    print(f"Validation split {name}: {seen:,} of its {len(held_out):,} reviews "
          f"({100 * seen / len(held_out):.1f}%) are of movies the other training reviews "
          "also cover.")


if __name__ == "__main__":
  app.run(main)
