"""benchmarks/serial_bound.py: how the chain timings become bounds and verdicts."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import serial_bound  # noqa: E402

# (framework, cores, batch, steps) -> seconds of the forward and backward chains.
TIMES = {
    ("jax", "all", 64, 500): {"forward": 0.030, "backward": 0.034},
    ("jax", "one", 32, 500): {"forward": 0.013, "backward": 0.019},
    ("jax", "one", 64, 500): {"forward": 0.028, "backward": 0.030},
    ("torch", "all", 64, 500): {"forward": 0.020, "backward": 0.020},
}


def test_one_chain_takes_the_fastest_layout_over_frameworks():
  seconds, way = serial_bound.fastest_step(TIMES, 500, 1, 64, ("forward", "backward"))
  assert (seconds, way) == (pytest.approx(0.032), "jax, batch split over 2 cores")
  seconds, way = serial_bound.fastest_step(TIMES, 500, 1, 64, ("forward",))
  assert (seconds, way) == (pytest.approx(0.013), "jax, batch split over 2 cores")


def test_two_chains_run_twice_over_or_one_direction_per_core():
  seconds, way = serial_bound.fastest_step(TIMES, 500, 2, 64, ("forward", "backward"))
  assert (seconds, way) == (pytest.approx(0.058), "jax, one direction per core")


def test_target_is_reachable_only_if_the_bound_reaches_it():
  row = {"train_bound": 900.0, "train_target": 845.0, "infer_bound": 2000.0,
         "infer_target": 2144.0}
  assert serial_bound._against_target(row, "train", 2.0) == "845 (2.0x) | yes"
  assert serial_bound._against_target(row, "infer", 1.5) == "2144 (1.5x) | **no**"
  assert serial_bound._against_target({}, "train", 2.0) == "— | —"


def test_best_peer_excludes_seqjax(tmp_path):
  results = tmp_path / "results.json"
  results.write_text('{"results": ['
                     '{"framework": "seqjax", "model": "lstm", "train_examples_per_second": 900,'
                     ' "infer_examples_per_second": 9000},'
                     '{"framework": "torch", "model": "lstm", "train_examples_per_second": 422,'
                     ' "infer_examples_per_second": 1400},'
                     '{"framework": "keras", "model": "lstm", "train_examples_per_second": 300,'
                     ' "infer_examples_per_second": 1430}]}')
  assert serial_bound.best_peers(results) == {"lstm": (422, 1430)}
