"""benchmarks/serial_bound.py: how the chain timings become bounds and verdicts."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import benchmark  # noqa: E402
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
  bound = {"chain": 1000.0, "chain_way": "jax, all cores", "arithmetic": 900.0, "bound": 900.0}
  assert serial_bound._against_target(bound, 845.0, 2.0).endswith("| 845 (2.0x) | yes")
  assert serial_bound._against_target(bound, 950.0, 1.5).endswith("| 950 (1.5x) | **no**")
  assert serial_bound._against_target(bound, None, 2.0).endswith("**900** | — | —")


def test_step_flops_count_every_matmul_three_times_in_training():
  # T = 500, B = 64, H = 100 inputs to 4H = 400 gates from the recurrence; the E = 32 features
  # of every token, or where the LSTM reads the embedding unchanged (the models without
  # dropout before it, and every one at inference), of the V = 5,000 rows of the table once;
  # the conv always reads it unchanged.
  # 2 FLOPs a multiply-add.
  recurrence, tokens = 2 * 500 * 64 * 100 * 400, 2 * 500 * 64 * 32 * 400
  table = 2 * 5000 * 32 * 400
  assert serial_bound.step_flops("lstm", 64, training=False) == recurrence + table
  assert serial_bound.step_flops("lstm", 64, training=True) == 3 * (recurrence + table)
  assert serial_bound.step_flops("lstm_dropout", 64, True) == 3 * (recurrence + tokens)
  assert serial_bound.step_flops("bilstm", 64, True) == 2 * serial_bound.step_flops(
      "lstm_dropout", 64, True)
  conv = 2 * 5000 * 32 * 3 * 32  # Each word's contribution at each of its taps, once.
  assert serial_bound.step_flops("cnn_lstm", 64, False) == (recurrence + tokens) // 2 + conv


def test_bound_is_the_slower_of_the_chain_and_the_arithmetic(monkeypatch):
  monkeypatch.setattr(serial_bound.os, "cpu_count", lambda: 2)
  times = {**TIMES, ("native", "one", 32, 500): {"forward": 0.0065, "backward": 0.0082}}
  rate = 2 * 32 * 100 * 400 * 500 / 0.0065  # The fastest chain on one core.
  assert serial_bound.fastest_rate(times) == pytest.approx(rate)
  bound = serial_bound.bound(times, "lstm", 64, training=True)
  assert bound["chain"] == pytest.approx(64 / (0.0065 + 0.0082))
  assert bound["chain_way"] == "native, batch split over 2 cores"
  assert bound["arithmetic"] == pytest.approx(
      64 / (serial_bound.step_flops("lstm", 64, True) / (2 * rate)))
  assert bound["bound"] == min(bound["chain"], bound["arithmetic"]) == bound["arithmetic"]


def row(framework: str, train: float, infer: float, malloc: str = "default") -> dict:
  return {"framework": framework, "model": "lstm", "malloc": malloc,
          "train_examples_per_second": train, "infer_examples_per_second": infer}


def test_best_peer_excludes_every_seqjax_variant(tmp_path):
  results = tmp_path / "results.json"
  results.write_text(json.dumps({"results": [
      row("seqjax", 900, 9000), row("seqjax_scan", 600, 5000), row("seqjax_2dev", 700, 6000),
      row("torch", 422, 1400), row("keras", 300, 1430)]}))
  assert serial_bound.best_peers(results) == {"lstm": (422, 1430)}


def test_each_figure_is_the_median_over_rounds_then_the_best_malloc():
  rows = [row("torch", 400, 1000), row("torch", 1200, 1100), row("torch", 500, 3000),
          row("torch", 450, 900, "restart"), row("torch", 460, 950, "restart"),
          row("torch", 470, 2000, "restart")]
  best = benchmark.best_of_mallocs(rows)[("lstm", "torch")]
  # default: medians 500 / 1100; restart: 460 / 950. The lucky 1200 and 3000 count for nothing.
  assert (best["train_examples_per_second"], best["infer_examples_per_second"]) == (500, 1100)
