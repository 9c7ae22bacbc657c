"""Data parallelism: 8 devices and 2 processes train as one device does; evaluation counts each
example once; a batch that does not divide by the devices is refused; bfloat16 trains."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import seqjax
from conftest import PROJECT_ROOT, TinyReviews, tiny_overrides
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


def test_two_processes_of_four_devices_train_as_one_device_does(values, one_device_run,
                                                                 tmp_path):
  address = f"127.0.0.1:{free_port()}"
  processes = [subprocess.Popen(
      main_command(tmp_path / "run", values, f"--coordinator_address={address}",
                   "--num_processes=2", f"--process_id={i}"),
      cwd=PROJECT_ROOT, env=environment(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for process, (_, stderr) in zip(processes, outputs, strict=True):
    assert process.returncode == 0, stderr[-3000:]
  assert "Process 1 of 2; 8 devices in all, 4 here." in outputs[1][1]
  assert_same_training(tmp_path / "run", one_device_run)


def test_bfloat16_compute_trains(tiny_data_dir, tmp_path):
  config = config_lib.base_config()
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"), compute_dtype="bfloat16",
                num_epochs=3, log_every_steps=1000)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  losses = [e["train_loss"] for e in results["epochs"]]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  params = seqjax.load(str(tmp_path / "run")).params
  assert all(p.dtype == np.float32 for p in jax.tree_util.tree_leaves(params))
