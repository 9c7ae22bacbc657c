"""Prediction on raw text from a trained workdir, through the Python API and the command line."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import seqjax
from conftest import PROJECT_ROOT, run_on_a_terminal, tiny_overrides
from seqjax import config as config_lib
from seqjax import train
from seqjax.errors import DataError


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
  """A workdir with a small model trained on `tiny_reviews`, and its results."""
  root = tmp_path_factory.mktemp("trained")
  config = config_lib.base_config()
  config.update(tiny_overrides(tiny_data_dir, root / "cache"), num_epochs=3,
                log_every_steps=1000)
  results = train.train_and_evaluate(config, str(root / "run"))
  return root / "run", results


def run_predict(*args, stdin=None):
  return subprocess.run([sys.executable, "-m", "seqjax.predict", *map(str, args)],
                        cwd=PROJECT_ROOT, input=stdin, capture_output=True, timeout=300)


def test_predict_reproduces_the_test_accuracy_training_reported(trained, tiny_data_dir):
  workdir, results = trained
  test = tfds.data_source("tiny_reviews", data_dir=tiny_data_dir, download=False)["test"]
  records = [test[i] for i in range(len(test))]
  probabilities = seqjax.load(str(workdir)).predict([r["text"] for r in records])
  labels = np.array([r["label"] for r in records])
  assert probabilities.shape == (len(records),) and probabilities.dtype == np.float32
  accuracy = np.mean((probabilities > 0.5) == (labels == 1))
  assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)


def test_awkward_texts_all_get_a_probability(trained):
  texts = ["", "   \t ", "qwzx vbnmq zzzyq", "Café, déjà vu 😀 映画 очень",
           "<br />Great<br /><br />", "bad " * 250_000]  # The last is a 1 MB review.
  probabilities = seqjax.load(str(trained[0])).predict(texts)
  assert probabilities.shape == (6,)
  assert np.all((probabilities > 0) & (probabilities < 1))


def test_long_review_is_truncated_as_in_training(trained):
  predictor = seqjax.load(str(trained[0]))
  max_length = predictor.config.max_length
  long, short = predictor.predict(["great " * 250_000, "great " * max_length])
  assert long == short  # 'pre' truncation keeps the last max_length ids of both.
  np.testing.assert_array_equal(predictor.encode(["great " * 250_000]),
                                predictor.encode(["great " * max_length]))


def test_empty_and_whitespace_texts_encode_like_an_empty_review(trained):
  predictor = seqjax.load(str(trained[0]))
  encoded = predictor.encode(["", "  ", "<br />"])
  assert np.all(encoded[:, :-1] == 0) and np.all(encoded[:, -1] == 1)  # Padding, then start.
  assert predictor.predict([]).shape == (0,)


def test_cli_prints_a_probability_and_label_per_text(trained):
  result = run_predict(f"--workdir={trained[0]}", "An absolute masterpiece.", "Dull, far too long.")
  assert result.returncode == 0, result.stderr.decode()[-2000:]
  lines = result.stdout.decode().splitlines()
  assert len(lines) == 2
  texts = ["An absolute masterpiece.", "Dull, far too long."]
  for line, text in zip(lines, texts, strict=True):
    probability, label, preview = line.split("\t")
    assert 0 < float(probability) < 1 and label in ("positive", "negative") and preview == text
  # Without a validation split there is no best epoch: the last checkpoint is used.
  assert b"checkpoint of step" in result.stderr and b"(the last)" in result.stderr


# An absl program with a --workdir flag of its own, which loads a seqjax model by it.
ABSL_APP = """
import json, sys
from absl import app, flags
flags.DEFINE_string("workdir", None, "This program's own --workdir.")
import seqjax

def main(argv):
  print(json.dumps(seqjax.load(flags.FLAGS.workdir).predict(argv[1:]).tolist()))

app.run(main)
"""


def test_absl_program_with_its_own_workdir_flag_can_load_and_predict(trained):
  texts = ["Great film, superb!", "awful and boring"]
  result = subprocess.run([sys.executable, "-c", ABSL_APP, f"--workdir={trained[0]}", *texts],
                          cwd=PROJECT_ROOT, capture_output=True, timeout=300)
  assert result.returncode == 0, result.stderr.decode()[-2000:]
  probabilities = json.loads(result.stdout.decode().splitlines()[-1])
  np.testing.assert_allclose(probabilities, seqjax.load(str(trained[0])).predict(texts),
                             atol=1e-6)


def test_importing_seqjax_defines_no_flags_and_sets_no_environment():
  """`import seqjax` defines no flag at all; its modules, which import libraries that define
  their own (absl, orbax, TFDS), define none of seqjax's; neither changes the environment."""
  check = """
import json, os
from absl import flags
before = (set(flags.FLAGS), dict(os.environ))
import seqjax
package = sorted(set(flags.FLAGS) - before[0])
import seqjax.predict, seqjax.train
modules = sorted(m for m in flags.FLAGS.flags_by_module_dict() if m.startswith("seqjax"))
print(json.dumps([package, modules, dict(os.environ) == before[1]]))
"""
  result = subprocess.run([sys.executable, "-c", check], cwd=PROJECT_ROOT, capture_output=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr.decode()[-2000:]
  assert json.loads(result.stdout.decode().splitlines()[-1]) == [[], [], True]


def test_cli_file_with_crlf_and_invalid_utf8_gives_jsonl_in_order(trained, tmp_path):
  lines = [b"Great film, superb!", b"awful \xff\xfe boring", b"", "Café 😀".encode(),
           b"terrible <br /> dull"]
  (tmp_path / "crlf.txt").write_bytes(b"\r\n".join(lines) + b"\r\n")
  (tmp_path / "lf.txt").write_bytes(b"\n".join(lines))  # No final newline.
  for name in ("crlf", "lf"):
    result = run_predict(f"--workdir={trained[0]}", f"--input={tmp_path / name}.txt",
                         f"--output={tmp_path / name}.jsonl")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b"line 2 is not valid UTF-8" in result.stderr
  crlf = [json.loads(x) for x in (tmp_path / "crlf.jsonl").read_text().splitlines()]
  lf = [json.loads(x) for x in (tmp_path / "lf.jsonl").read_text().splitlines()]
  assert [r["line"] for r in crlf] == [1, 2, 3, 4, 5]
  assert crlf == lf  # '\r' is not part of a review.
  api = seqjax.load(str(trained[0])).predict([x.decode(errors="replace") for x in lines])
  np.testing.assert_allclose([r["probability"] for r in crlf], api, atol=1e-6)


def test_cli_writing_a_file_shows_progress_with_eta_on_a_terminal(trained, tmp_path):
  (tmp_path / "in.txt").write_text("great film\n" * 600)
  output = run_on_a_terminal(["-m", "seqjax.predict", f"--workdir={trained[0]}",
                              f"--input={tmp_path / 'in.txt'}",
                              f"--output={tmp_path / 'out.jsonl'}"])
  assert re.search(r"predict: +\d+%\|.*\| \d+/600 reviews \[.*reviews/s, ETA", output), output
  assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 600


def test_cli_reads_standard_input(trained):
  result = run_predict(f"--workdir={trained[0]}", "--input=-", stdin=b"great\nawful\n")
  assert result.returncode == 0, result.stderr.decode()[-2000:]
  assert len(result.stdout.decode().splitlines()) == 2


def test_missing_workdir_is_one_clear_error(tmp_path):
  result = run_predict(f"--workdir={tmp_path / 'nope'}", "text",
                       f"--output={tmp_path / 'out.jsonl'}")
  assert result.returncode == 1
  assert b"does not exist" in result.stderr and b"Traceback" not in result.stderr
  assert not (tmp_path / "out.jsonl").exists()


def test_incomplete_workdir_is_refused(trained, tmp_path):
  workdir = tmp_path / "incomplete"
  shutil.copytree(trained[0], workdir)
  shutil.rmtree(workdir / "checkpoints")
  with pytest.raises(DataError, match="holds no checkpoint"):
    seqjax.load(str(workdir))
  (workdir / "vocabulary.json").unlink()
  with pytest.raises(DataError, match="Cannot read the vocabulary"):
    seqjax.load(str(workdir))


def test_checkpoint_that_does_not_match_its_config_is_refused(trained, tmp_path):
  workdir = tmp_path / "mismatch"
  shutil.copytree(trained[0], workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["lstm_units"] += 1
  (workdir / "config.json").write_text(json.dumps(config))
  result = run_predict(f"--workdir={workdir}", "text")
  assert result.returncode == 1
  assert b"does not match the config" in result.stderr and b"Traceback" not in result.stderr


def test_run_with_validation_predicts_with_its_best_validation_checkpoint(tiny_data_dir,
                                                                          tmp_path):
  config = config_lib.base_config()
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"), num_epochs=4,
                validation_size=60, log_every_steps=1000)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  epochs = results["epochs"]
  best = max(epochs, key=lambda r: (r["validation_accuracy"], -r["epoch"]))
  assert results["best_epoch"] == best["epoch"]
  assert results["best_epoch_test_accuracy"] == best["test_accuracy"]
  predictor = seqjax.load(str(tmp_path / "run"))
  assert predictor.checkpoint == "best on validation" and predictor.step == best["step"]


def test_bucketed_model_predicts_each_text_as_if_alone(tiny_data_dir, tmp_path):
  config = config_lib.from_file(PROJECT_ROOT / "configs" / "lstm_bucketed.py")
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"), num_epochs=1,
                log_every_steps=1000, bucket_width=10)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  predictor = seqjax.load(str(tmp_path / "run"))
  texts = ["great " * n for n in (30, 2, 17, 1, 9)] + ["awful film"]
  together = predictor.predict(texts)
  alone = np.concatenate([predictor.predict([t]) for t in texts])
  np.testing.assert_allclose(together, alone, atol=1e-6)


def test_run_with_a_moving_average_predicts_with_the_average(tiny_data_dir, tmp_path):
  """The test loss computed from predict's probabilities is the one training reported: the
  averaged parameters', which differ from the last step's."""
  config = config_lib.base_config()
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"), num_epochs=2,
                ema_decay=0.9, log_every_steps=1000)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  test = tfds.data_source("tiny_reviews", data_dir=tiny_data_dir, download=False)["test"]
  records = [test[i] for i in range(len(test))]
  p = seqjax.load(str(tmp_path / "run")).predict([r["text"] for r in records]).astype(np.float64)
  labels = np.array([r["label"] for r in records])
  loss = -np.mean(np.where(labels == 1, np.log(p), np.log1p(-p)))
  assert loss == pytest.approx(results["test_loss"], abs=1e-5)
