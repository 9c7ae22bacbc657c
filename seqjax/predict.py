"""Applies a trained model to raw text, from Python or from the command line.

  clf = seqjax.load("runs/bilstm"); clf.predict(["An absolute masterpiece.", "Dull."])

  python -m seqjax.predict --workdir=runs/bilstm "An absolute masterpiece." "Dull, far too long."
  python -m seqjax.predict --workdir=runs/bilstm --input=reviews.txt --output=predictions.jsonl

Texts go through the tokenizer, vocabulary, padding and truncation the run trained with, all
read from its workdir.
"""

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from seqjax import cli, malloc

if __name__ == "__main__":
  malloc.restart_with_huge_pages()  # Before the slow imports below.
  cli.quiet_tensorflow()  # Before the imports below import TensorFlow.

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from seqjax import checkpoints as ckpt  # noqa: E402
from seqjax import files, input_pipeline, models, progress, tokenizer, train  # noqa: E402
from seqjax import workdir as workdir_lib  # noqa: E402
from seqjax.errors import DataError  # noqa: E402

LABELS = ("negative", "positive")


class Predictor:
  """A trained classifier read from a workdir: raw texts in, P(positive) out."""

  def __init__(self, workdir: str, batch_size: int = 256):
    self.workdir = os.path.abspath(workdir)
    if not os.path.isdir(self.workdir):
      raise DataError(f"The workdir {self.workdir} does not exist. Pass the --workdir of a "
                      "finished `python -m seqjax.main` run.")
    self.config = workdir_lib.read_config(self.workdir)
    if self.config.task == "language_model":
      raise DataError(f"{self.workdir} holds a language model, which predicts words, not "
                      "sentiment. Fine-tune a classifier from it (--config.init_from="
                      f"{self.workdir}) and load that run.")
    self.vocabulary = tokenizer.Vocabulary.load(os.path.join(self.workdir, workdir_lib.VOCABULARY))
    if self.vocabulary.top_words != self.config.top_words:
      raise DataError(f"vocabulary.json has top_words={self.vocabulary.top_words} but "
                      f"config.json has {self.config.top_words}: the workdir is inconsistent.")
    self.batch_size = batch_size
    malloc.keep_freed_memory(jax.default_backend())
    self.model = models.create_model(self.config)
    self.checkpoint, self.step, self.params = self._restore()
    self._probabilities = jax.jit(
        lambda params, inputs: jax.nn.sigmoid(self.model.apply({"params": params}, inputs)))

  def _restore(self) -> tuple[str, int, dict]:
    """Which checkpoint (`ckpt.open_final`), its step and its parameters."""
    checkpoints, step, which = ckpt.open_final(self.workdir)
    try:
      target = train.create_train_state(self.config, self.model, jax.random.PRNGKey(0))
      state, _ = checkpoints.restore(step, target, train.Metrics.empty())
    finally:
      checkpoints.close()
    return which, step, state.eval_params

  def encode(self, texts: Iterable[str | bytes]) -> np.ndarray:
    """(N, max_length) int32 ids, exactly as training encoded its reviews."""
    return input_pipeline.encode_tokens(self.config, self.vocabulary,
                                        (tokenizer.tokenize(t) for t in texts))

  def predict(self, texts: Sequence[str | bytes],
              progress: Callable[[int], object] | None = None) -> np.ndarray:
    """P(positive) for each text, float32 (N,); `progress(n)` is called as each batch of n
    texts is done.

    A model trained with bucketing reads the texts in batches of similar length, each cut
    to its longest text's bucket; the results come back in the input order.
    """
    return self.predict_encoded(self.encode(texts), progress)

  def predict_encoded(self, inputs: np.ndarray,
                      progress: Callable[[int], object] | None = None) -> np.ndarray:
    """`predict` for texts already encoded, (N, max_length) ids as `encode` or the run's
    input pipeline gives them."""
    split = input_pipeline.Split(inputs, np.zeros(len(inputs), np.int32))
    order = split.order(bool(self.config.bucket_width))
    out = []
    for batch in input_pipeline.batches(split, self.batch_size, order, self.config.bucket_width):
      out.append(np.asarray(self._probabilities(self.params, batch["inputs"]))[batch["mask"] == 1])
      if progress:
        progress(len(out[-1]))
    probabilities = np.zeros(len(inputs), np.float32)
    probabilities[order] = np.concatenate(out) if out else []
    return probabilities


def load(workdir: str, batch_size: int = 256) -> Predictor:
  """The model trained in `workdir`, ready to `predict` raw texts.

  Its checkpoint is the one of the best validation accuracy if the run had a validation
  split, else the last; `.checkpoint` and `.step` say which.
  """
  return Predictor(workdir, batch_size)


def read_lines(stream, name: str) -> Iterator[tuple[int, str]]:
  """(line number, text) of a byte stream; \\r\\n ends a line too; bad UTF-8 is replaced."""
  for number, raw in enumerate(stream, start=1):
    raw = raw.rstrip(b"\n").rstrip(b"\r")
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      logging.warning("%s line %d is not valid UTF-8 (%s); undecodable bytes replaced.", name,
                      number, e.reason)
      text = raw.decode("utf-8", errors="replace")
    yield number, text


def _count_lines(path: str) -> int:
  """Lines in a file, a last line without a newline included."""
  count, last = 0, b"\n"
  with open(path, "rb") as f:
    while block := f.read(1 << 20):
      count, last = count + block.count(b"\n"), block[-1:]
  return count + (last != b"\n")


def _chunks(lines: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
  chunk = []
  for item in lines:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags: defined by the command only, so that importing this module (as
  `seqjax.load` does) leaves an absl program's own flags alone."""
  flags.DEFINE_string("workdir", None, "Workdir of a finished `python -m seqjax.main` run.")
  flags.DEFINE_string("input", None, "File with one review per line; '-' reads standard input.")
  flags.DEFINE_string("output", None, "Write one JSON object per input line here (JSONL).")
  flags.DEFINE_integer("batch_size", 256, "Reviews per forward pass.")
  flags.DEFINE_integer("progress_every", 5000,
                       "Reviews read at a time; progress goes to stderr after each such chunk.")


def _run(texts: Sequence[str]) -> None:
  predictor = load(FLAGS.workdir, FLAGS.batch_size)
  print(f"Model: {predictor.workdir} ({predictor.config.name}), checkpoint of step "
        f"{predictor.step} ({predictor.checkpoint}).", file=sys.stderr)
  with contextlib.ExitStack() as stack:
    if FLAGS.input is None:
      name, lines = "arguments", iter(enumerate(texts, start=1))
    elif FLAGS.input == "-":
      name, lines = "stdin", read_lines(sys.stdin.buffer, "stdin")
    else:
      try:
        stream = stack.enter_context(open(FLAGS.input, "rb"))
      except OSError as e:
        raise DataError(f"Cannot open --input={FLAGS.input}: {e.strerror}.") from e
      name, lines = FLAGS.input, read_lines(stream, FLAGS.input)
    # The output file appears only once complete.
    out = (stack.enter_context(files.atomic_open(FLAGS.output, encoding="utf-8"))
           if FLAGS.output else None)
    # With --output, the terminal shows a progress line (the texts' count, when known).
    total = (len(texts) if FLAGS.input is None else
             None if FLAGS.input == "-" else _count_lines(FLAGS.input))
    bar = stack.enter_context(progress.bar(total, "predict", unit="reviews", shown=bool(out)))
    start, done = time.time(), 0
    for chunk in _chunks(lines, FLAGS.progress_every):
      probabilities = predictor.predict([text for _, text in chunk], bar.update)
      for (number, text), p in zip(chunk, probabilities, strict=True):
        label = LABELS[int(p > 0.5)]
        if out:
          out.write(json.dumps({"line": number, "probability": round(float(p), 6),
                                "label": label}) + "\n")
        else:
          preview = " ".join(text.split())
          print(f"{p:.4f}\t{label}\t{preview[:57] + '...' if len(preview) > 60 else preview}")
      done += len(chunk)
      if done >= FLAGS.progress_every and bar.disable:
        print(f"{done} reviews from {name}, {done / (time.time() - start):.0f} reviews/s",
              file=sys.stderr)
  seconds = time.time() - start
  print(f"Predicted {done} reviews in {seconds:.1f} s ({done / seconds:.0f} reviews/s).",
        file=sys.stderr)


def main(argv):
  texts = argv[1:]
  if FLAGS.workdir is None:
    raise app.UsageError("--workdir is required.")
  if bool(texts) == (FLAGS.input is not None):
    raise app.UsageError("Give texts as arguments or --input=FILE, one of the two.")
  cli.run(_run, texts)


if __name__ == "__main__":
  define_flags()
  app.run(main)
