"""Never lose a run: kills and signals resume exactly; damaged checkpoints, NaN, full disks and
bad configs each stop with one clear message."""

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seqjax
from conftest import PROJECT_ROOT, assert_same_run, load_config, tiny_overrides
from seqjax import checkpoints as ckpt
from seqjax import config as config_lib
from seqjax import tokenizer, train
from seqjax.errors import ConfigError

def overrides(tiny_data_dir, tmp_path, **extra) -> dict:
  # A model big enough that a step takes milliseconds, so a kill lands mid-run.
  values = tiny_overrides(tiny_data_dir, tmp_path / "cache")
  values.update(lstm_units=32, max_length=120, checkpoint_every_steps=4, log_every_steps=1,
                embedding_dropout=0.2, lstm_recurrent_dropout=0.2)
  values.update(extra)
  return values


def command(workdir, values: dict) -> list[str]:
  return [sys.executable, "-m", "seqjax.main", f"--config={PROJECT_ROOT / 'configs/lstm.py'}",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in values.items())]


def run_until_step(workdir, values: dict, step: int, sig: int) -> subprocess.Popen:
  """Starts training and sends `sig` once it has logged global step `step`."""
  steps_per_epoch = -(-200 // values["batch_size"])
  process = subprocess.Popen(command(workdir, values), cwd=PROJECT_ROOT, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  pattern = re.compile(r"epoch (\d+)/\d+  step (\d+)/")
  for line in process.stderr:
    match = pattern.search(line)
    if match and (int(match[1]) - 1) * steps_per_epoch + int(match[2]) >= step:
      process.send_signal(sig)
      break
  process.stderr_text = process.stderr.read()
  process.wait(timeout=120)
  return process


@pytest.fixture(scope="module")
def uninterrupted(tiny_data_dir, tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("uninterrupted")
  result = subprocess.run(command(tmp_path / "run", overrides(tiny_data_dir, tmp_path)),
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return tmp_path / "run"


@pytest.mark.parametrize("kill_points", [(2,), (6, 15), (13, 22)])
def test_sigkill_then_restart_gives_bitwise_identical_parameters(
    tiny_data_dir, tmp_path, uninterrupted, kill_points):
  """Killed before the first checkpoint, mid-epoch, at an epoch's end and in epoch 2."""
  values = overrides(tiny_data_dir, tmp_path)
  workdir = tmp_path / "run"
  for step in kill_points:
    process = run_until_step(workdir, values, step, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, process.stderr_text[-3000:]
    assert not (workdir / "results.json").exists()  # It was killed mid-run.
  result = subprocess.run(command(workdir, values), cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_same_run(workdir, uninterrupted)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_data_dir, tmp_path, uninterrupted):
  values = overrides(tiny_data_dir, tmp_path)
  workdir = tmp_path / "run"
  process = run_until_step(workdir, values, 7, signal.SIGTERM)
  assert process.returncode == 128 + signal.SIGTERM
  match = re.search(r"stopped: SIGTERM received: saved the checkpoint of step (\d+)",
                    process.stderr_text)
  assert match and "Traceback" not in process.stderr_text
  checkpoints = ckpt.Checkpoints(str(workdir / "checkpoints"), keep=3, create=False)
  assert checkpoints.latest_step() == int(match[1])
  checkpoints.close()
  result = subprocess.run(command(workdir, values), cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_same_run(workdir, uninterrupted)


SECOND_SIGINT = """
import os, signal, time
from seqjax import preemption
with preemption.StopRequests(lambda: "The last complete checkpoint, step 12, is kept.") as stops:
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(0.5)
  print("asked to stop after step 1:", stops.stop_signal(1) == signal.SIGINT, flush=True)
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(60)  # As if waiting on the devices or on other hosts.
print("not stopped", flush=True)
"""


def test_a_second_sigint_exits_at_once_even_while_the_main_thread_waits(tmp_path):
  start = time.time()
  result = subprocess.run([sys.executable, "-c", SECOND_SIGINT], capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 128 + signal.SIGINT
  assert result.stdout == "asked to stop after step 1: True\n"
  assert time.time() - start < 30
  assert result.stderr.strip().endswith(
      "stopped: a second SIGINT: exited at once, without saving. The last complete "
      "checkpoint, step 12, is kept.")


def tiny_config(tiny_data_dir, tmp_path, **extra):
  """What `command` runs (configs/lstm.py and `overrides`), in this process."""
  config = load_config("lstm")
  config.update(overrides(tiny_data_dir, tmp_path, **{"log_every_steps": 1000, **extra}))
  return config


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    tiny_data_dir, tmp_path, uninterrupted, caplog):
  caplog.set_level(logging.INFO)
  config = tiny_config(tiny_data_dir, tmp_path)
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  latest = workdir / "checkpoints" / "26"
  for root, _, names in os.walk(latest):
    for name in names:
      if not name.startswith("_"):  # Keep the marker files; damage the data.
        with open(os.path.join(root, name), "r+b") as f:
          f.write(b"\0garbage" * 64)
  train.train_and_evaluate(config, str(workdir))
  assert f"The checkpoint {latest} is unreadable" in caplog.text
  assert "Resumed from the checkpoint at step 24" in caplog.text
  assert_same_run(workdir, uninterrupted)


def test_checkpoint_of_another_layout_is_refused_by_name_and_left_in_place(
    tiny_data_dir, tmp_path):
  """Say, a bare train state from an early seqjax: not damage, so it must not be moved aside."""
  foreign = tmp_path / "run" / "checkpoints"
  manager = ckpt.ocp.CheckpointManager(foreign, item_handlers=ckpt.ocp.StandardCheckpointHandler())
  manager.save(5, args=ckpt.ocp.args.StandardSave({"params": {"w": np.zeros(3)}, "step": 5}))
  manager.close()
  with pytest.raises(ckpt.CheckpointError, match=r"checkpoints/5 was not written by this "
                                                 r"version of seqjax: it holds params, step"):
    train.train_and_evaluate(tiny_config(tiny_data_dir, tmp_path), str(tmp_path / "run"))
  assert os.listdir(foreign) == ["5"]


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tiny_data_dir, tmp_path):
  # A learning rate near float32's maximum overflows the parameters on the first update.
  config = tiny_config(tiny_data_dir, tmp_path, learning_rate=3e38, checkpoint_every_steps=1,
                       log_every_steps=1)
  with pytest.raises(train.TrainingError,
                     match=r"became NaN or infinite at step (\d+).*last good checkpoint "
                           r"\(step (\d+)\) is kept") as error:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  bad, kept = map(int, re.search(r"step (\d+).*step (\d+)", str(error.value)).groups())
  assert kept == bad - 1
  params = seqjax.load(str(tmp_path / "run")).params
  assert all(np.all(np.isfinite(p)) for p in jax.tree_util.tree_leaves(params))


def test_full_disk_while_saving_is_a_clear_error_and_keeps_the_previous_checkpoint(
    tiny_data_dir, tmp_path, monkeypatch):
  real_save = ckpt.ocp.CheckpointManager.save

  def save_until_disk_is_full(self, step, *args, **kwargs):
    if step > 8:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ckpt.ocp.CheckpointManager, "save", save_until_disk_is_full)
  with pytest.raises(ckpt.CheckpointError, match=r"step 12 .*No space left on device.* "
                                                 r"previous checkpoint \(step 8\) is intact"):
    train.train_and_evaluate(tiny_config(tiny_data_dir, tmp_path), str(tmp_path / "run"))
  assert seqjax.load(str(tmp_path / "run")).step == 8


@pytest.fixture
def small_disk(tmp_path):
  """A 2 MB tmpfs (needs root, as in CI here); skips where it cannot be mounted."""
  mount_point = tmp_path / "small_disk"
  mount_point.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                           capture_output=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
  yield mount_point
  subprocess.run(["umount", str(mount_point)], check=True)


def test_real_full_disk_stops_with_a_clear_error_and_the_previous_checkpoint_restores(
    tiny_data_dir, tmp_path, small_disk):
  config = tiny_config(tiny_data_dir, tmp_path, lstm_units=64, checkpoint_every_steps=1,
                       keep_checkpoints=100)
  with pytest.raises(ckpt.CheckpointError, match=r"No space left on device.*previous "
                                                 r"checkpoint \(step (\d+)\) is intact") as error:
    train.train_and_evaluate(config, str(small_disk / "run"))
  intact = int(re.search(r"previous checkpoint \(step (\d+)\)", str(error.value))[1])
  assert intact > 0 and seqjax.load(str(small_disk / "run")).step == intact


@pytest.mark.parametrize("key, value, allowed", [
    ("lstm_dropout", 1.0, "use a rate in [0, 1)"),
    ("embedding_dropout", -0.1, "use a rate in [0, 1)"),
    ("word_dropout", 1.0, "use a rate in [0, 1)"),
    ("validation_groups", "movies.txt", "it needs validation_size > 0"),
    ("max_length", 0, "use an integer >= 1"),
    ("top_words", 3, "use >= 4 (ids 0-2 are reserved for padding, start and out-of-vocabulary)"),
    ("batch_size", 0, "use an integer >= 1"),
    ("num_epochs", 0, "use an integer >= 1"),
    ("padding", "middle", "use 'pre' or 'post'"),
    ("truncating", "both", "use 'pre' or 'post'"),
    ("learning_rate", 0.0, "use a value > 0"),
    ("validation_size", -1, "use an integer >= 0"),
    ("dataset", "", "name a TFDS dataset"),
    ("bucket_width", 50, "bucketing needs mask_padding=True, else padding would change the "
                         "results"),
    ("lstm_layers", 0, "use an integer >= 1"),
    ("ngram_order", -1, "use an integer >= 0"),
    ("lstm_units", 0, "use an integer >= 1, or set ngram_order >= 1 for a bag of n-grams alone"),
    ("ngram_bag", "tfidf", "use one of 'embedding', 'naive_bayes'"),
    ("embedding_top_words", 6000, "use 4 to top_words=5000, or 0 for all of them"),
    ("pooling", "sum", "use one of 'last', 'max', 'mean', 'max_mean'"),
    ("learning_rate_schedule", "linear", "use 'constant' or 'cosine'"),
    ("weight_decay", -0.1, "use a value >= 0; 0 = no weight decay"),
    ("ema_decay", 1.0, "use a decay in [0, 1), e.g. 0.999; 0 = no moving average"),
    ("adversarial_epsilon", -0.5, "use a value >= 0, e.g. 0.15; 0 = no adversarial training"),
    ("gradient_clip_norm", -1.0, "use a norm > 0, or 0 for no clipping"),
    ("evaluate_test", "sometimes", "use one of 'every_epoch', 'best_epoch', 'never'"),
    ("evaluate_test", "never", "it needs validation_size > 0 (epochs are then judged on "
                               "validation)"),
])
def test_bad_config_value_names_key_value_and_what_is_allowed(key, value, allowed):
  config = config_lib.base_config()
  config[key] = value
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config)
  assert str(error.value) == f"config.{key}={value!r} is invalid: {allowed}."


@pytest.mark.parametrize("argument, message", [
    ("--config.lstm_unitz=3", "there is no config key 'lstm_unitz' (did you mean 'lstm_units'?)"),
    ("--config.batch_size=abc", "--config.batch_size=abc"),
    ("--config.lstm_dropout=1.5", "config.lstm_dropout=1.5 is invalid: use a rate in [0, 1)."),
    ("--config=configs/nowhere.py", "--config=configs/nowhere.py: no such file"),
])
def test_bad_command_line_exits_2_with_one_line_and_no_traceback(tmp_path, argument, message):
  args = [sys.executable, "-m", "seqjax.main", "--config=configs/lstm.py",
          f"--workdir={tmp_path / 'run'}", argument]
  result = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert message in result.stderr
  assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "run").exists()


def test_overwrite_replaces_a_run_of_another_config(tiny_data_dir, tmp_path):
  values = overrides(tiny_data_dir, tmp_path, num_epochs=1, log_every_steps=1000)
  assert subprocess.run(command(tmp_path / "run", values), cwd=PROJECT_ROOT,
                        capture_output=True, timeout=300).returncode == 0
  values["lstm_units"] = 16
  refused = subprocess.run(command(tmp_path / "run", values), cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=300)
  assert refused.returncode == 2 and "lstm_units: 32 -> 16" in refused.stderr
  replaced = subprocess.run(command(tmp_path / "run", values) + ["--overwrite"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
  assert replaced.returncode == 0, replaced.stderr[-3000:]
  assert json.loads((tmp_path / "run" / "config.json").read_text())["lstm_units"] == 16


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(), max_size=300) | st.binary(max_size=300))
def test_tokenizer_never_raises_and_ids_stay_in_range(text):
  vocabulary = tokenizer.Vocabulary(["the", "film", "café", "映画"], top_words=10)
  ids = tokenizer.pad_sequences([vocabulary.encode(tokenizer.tokenize(text))], 20)
  assert ids.shape == (1, 20)
  assert ids.min() >= 0 and ids.max() < 10


def test_masking_with_pre_padding_is_refused():
  config = config_lib.base_config()
  config.mask_padding = True
  with pytest.raises(ConfigError, match=r"config.padding='pre' is invalid: use 'post' with "
                                        r"mask_padding=True"):
    config_lib.validate(config)
