"""Data parallelism: 8 devices and 2 processes train as one device does; evaluation counts each
example once; a batch that does not divide by the devices is refused; bfloat16 trains. Two
processes stop at the same step when either is signalled, and resume exactly; --overwrite
clears the workdir before any process reads it."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import seqjax
from conftest import PROJECT_ROOT, TinyReviews, assert_same_run, tiny_overrides
from seqjax import config as config_lib
from seqjax import train


def main_command(workdir, values: dict, *extra) -> list[str]:
  return [sys.executable, "-m", "seqjax.main", f"--config={PROJECT_ROOT / 'configs/lstm.py'}",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in values.items()), *extra]


def environment(devices: int) -> dict:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run_on(devices: int, workdir, values: dict) -> subprocess.CompletedProcess:
  return subprocess.run(main_command(workdir, values), cwd=PROJECT_ROOT, env=environment(devices),
                        capture_output=True, text=True, timeout=600)


def assert_same_training(workdir, reference):
  got = json.loads((workdir / "results.json").read_text())
  want = json.loads((reference / "results.json").read_text())
  assert got["num_test_examples"] == want["num_test_examples"] == TinyReviews.SPLIT_SIZES["test"]
  for e, w in zip(got["epochs"], want["epochs"], strict=True):
    for key in ("train_loss", "test_loss"):
      assert e[key] == pytest.approx(w[key], abs=1e-5)
    assert e["test_accuracy"] == pytest.approx(w["test_accuracy"], abs=1 / 37 + 1e-9)
  for a, b in zip(jax.tree_util.tree_leaves(seqjax.load(str(workdir)).params),
                  jax.tree_util.tree_leaves(seqjax.load(str(reference)).params), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def values(tiny_data_dir, tmp_path_factory) -> dict:
  # Dropout on, so that the random masks must also agree across device counts.
  return {**tiny_overrides(tiny_data_dir, tmp_path_factory.mktemp("cache")), "num_epochs": 1,
          "embedding_dropout": 0.2, "lstm_recurrent_dropout": 0.2, "log_every_steps": 1000}


@pytest.fixture(scope="module")
def one_device_run(values, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device") / "run"
  result = run_on(1, workdir, values)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_eight_devices_train_as_one_does(values, one_device_run, tmp_path):
  """Same global batch of 16 over 8 devices: same losses and parameters (to 1e-5), and the
  37 test examples (not a multiple of 8) each counted once."""
  result = run_on(8, tmp_path / "run", values)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_same_training(tmp_path / "run", one_device_run)


def test_batch_that_does_not_divide_by_the_devices_is_refused(values, tmp_path):
  result = run_on(8, tmp_path / "run", {**values, "batch_size": 12})
  assert result.returncode == 2
  assert ("config.batch_size=12 is invalid: it must divide by the 8 devices; use a multiple of 8"
          in result.stderr)
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_two_processes(workdir, values: dict, logs, *extra) -> list[subprocess.Popen]:
  """Two processes of four devices each; their stderr goes to the files `logs`."""
  address = f"127.0.0.1:{free_port()}"
  return [subprocess.Popen(
      main_command(workdir, values, f"--coordinator_address={address}", "--num_processes=2",
                   f"--process_id={i}", *extra),
      cwd=PROJECT_ROOT, env=environment(4), stdout=subprocess.DEVNULL,
      stderr=open(logs[i], "w"), text=True) for i in range(2)]


def run_two_processes(workdir, values: dict, logs, *extra) -> list[str]:
  """Trains to the end on two processes; their stderr."""
  processes = start_two_processes(workdir, values, logs, *extra)
  for process, log in zip(processes, logs, strict=True):
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
  return [log.read_text() for log in logs]


def test_two_processes_of_four_devices_train_as_one_device_does(values, one_device_run,
                                                                 tmp_path):
  logs = [tmp_path / "0.log", tmp_path / "1.log"]
  stderr = run_two_processes(tmp_path / "run", values, logs)
  assert "Process 1 of 2; 8 devices in all, 4 here." in stderr[1]
  assert_same_training(tmp_path / "run", one_device_run)


STEPS_PER_EPOCH = -(-TinyReviews.SPLIT_SIZES["train"] // 16)


@pytest.fixture(scope="module")
def long_values(values) -> dict:
  """Long enough (520 steps) that a stop lands mid-run, with a log line at every step."""
  return {**values, "num_epochs": 40, "log_every_steps": 1}


@pytest.fixture(scope="module")
def two_process_run(long_values, tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("two_processes")
  run_two_processes(tmp_path / "run", long_values, [tmp_path / "0.log", tmp_path / "1.log"])
  return tmp_path / "run"


def logged_step(log) -> int:
  """The last global step a process logged (0 if none yet)."""
  steps = re.findall(r"epoch (\d+)/\d+  step (\d+)/", log.read_text())
  return max(((int(e) - 1) * STEPS_PER_EPOCH + int(s) for e, s in steps), default=0)


def signal_when_logged(process: subprocess.Popen, log, step: int) -> None:
  """Sends SIGTERM to `process` once it has logged global step `step`."""
  while logged_step(log) < step:
    assert process.poll() is None, log.read_text()[-3000:]
    time.sleep(0.01)
  process.send_signal(signal.SIGTERM)


@pytest.mark.parametrize("both", [False, True], ids=["one_process", "both_at_different_steps"])
def test_sigterm_stops_both_processes_at_one_step_and_they_resume_exactly(
    long_values, two_process_run, tmp_path, both):
  """SIGTERM to process 1 alone at step 30, or to process 0 at step 30 and to process 1 a step
  later: both save the same step and exit with 143 within seconds; rerun, they end as an
  uninterrupted run does, bitwise."""
  logs = [tmp_path / "0.log", tmp_path / "1.log"]
  processes = start_two_processes(tmp_path / "run", long_values, logs)
  first = 0 if both else 1
  signal_when_logged(processes[first], logs[first], 30)
  if both:
    signal_when_logged(processes[1], logs[1], logged_step(logs[1]) + 1)
  signalled = time.time()
  codes = [p.wait(timeout=120) for p in processes]
  seconds = time.time() - signalled
  stderr = [log.read_text() for log in logs]
  assert codes == [128 + signal.SIGTERM] * 2, stderr
  saved = [re.findall(r"stopped: SIGTERM received: saved the checkpoint of step (\d+)", text)
           for text in stderr]
  assert saved[0] == saved[1] and len(saved[0]) == 1, stderr
  step = int(saved[0][0])
  assert 30 <= step < long_values["num_epochs"] * STEPS_PER_EPOCH
  assert seconds < 20
  assert "Traceback" not in stderr[0] + stderr[1]

  run_two_processes(tmp_path / "run", long_values, logs)
  assert_same_run(tmp_path / "run", two_process_run)


def test_overwrite_on_two_processes_leaves_no_file_of_the_old_run(values, tmp_path):
  """The old run (another seed, a checkpoint, an events file) is gone before either process
  looks: neither refuses the workdir, nor reads the old checkpoint."""
  workdir = tmp_path / "run"
  old = {**values, "seed": 3, "num_epochs": 2}
  run_two_processes(workdir, old, [tmp_path / "old0.log", tmp_path / "old1.log"])
  old_files = {p.name for p in workdir.iterdir()}
  assert {"config.json", "metrics.jsonl", "checkpoints"} <= old_files
  old_events = {name for name in old_files if name.startswith("events.out.tfevents")}
  assert old_events

  run_two_processes(workdir, values, [tmp_path / "0.log", tmp_path / "1.log"], "--overwrite")
  assert json.loads((workdir / "config.json").read_text())["seed"] == config_lib.base_config().seed
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in history] == [1]
  assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == [STEPS_PER_EPOCH]
  assert not old_events & {p.name for p in workdir.iterdir()}
  assert not [p for p in workdir.iterdir() if p.name.endswith("-unreadable")]


def test_bfloat16_compute_trains(tiny_data_dir, tmp_path):
  config = config_lib.base_config()
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"), compute_dtype="bfloat16",
                num_epochs=3, log_every_steps=1000)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  losses = [e["train_loss"] for e in results["epochs"]]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  params = seqjax.load(str(tmp_path / "run")).params
  assert all(p.dtype == np.float32 for p in jax.tree_util.tree_leaves(params))
