"""The experiment scripts' launcher: a finished run is reused only for the config it ran."""

import json
import sys

import numpy as np
import pytest

from conftest import PROJECT_ROOT
from seqjax import config as config_lib
from seqjax.errors import ConfigError

sys.path.insert(0, str(PROJECT_ROOT / "experiments"))
import common  # noqa: E402


def finished_run(workdir, config):
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json())
  (workdir / "results.json").write_text(json.dumps({"test_accuracy": 0.5}))


def test_launch_reads_a_finished_run_of_the_same_config(tmp_path):
  config_file = PROJECT_ROOT / "configs" / "naive_bayes_bag.py"
  config = config_lib.from_file(config_file)
  config.seed = 8
  finished_run(tmp_path / "run", config)
  record = common.launch(config_file, tmp_path / "run", {"seed": 8})
  assert record["test_accuracy"] == 0.5


def test_launch_refuses_a_finished_run_of_another_config(tmp_path):
  config_file = PROJECT_ROOT / "configs" / "naive_bayes_bag.py"
  finished_run(tmp_path / "run", config_lib.from_file(config_file))
  with pytest.raises(ConfigError, match=r"ngram_order: 3 -> 2"):
    common.launch(config_file, tmp_path / "run", {"ngram_order": 2})


def tiny_run(tiny_data_dir, tmp_path, name, **overrides):
  from conftest import load_config, tiny_overrides
  from seqjax import train
  config = load_config("lstm")
  config.update(tiny_overrides(tiny_data_dir, tmp_path / "cache"))
  config.update({"validation_size": 60, "log_every_steps": 1000, **overrides})
  train.train_and_evaluate(config, str(tmp_path / name))
  return str(tmp_path / name)


def test_combination_weight_is_the_one_of_least_validation_loss():
  import combine
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 500)
  informed = np.where(labels == 1, 2.0, -2.0) + rng.normal(size=500)
  noise = rng.normal(size=500)
  assert combine.choose_weight(informed, noise, labels)[0] > 0.5
  assert combine.choose_weight(noise, informed, labels)[0] < 0.5
  # Two informative runs with independent errors: both count, the better more (the ideal
  # weight here is 2/3).
  other = np.where(labels == 1, 1.0, -1.0) + rng.normal(size=500)
  weight, scale = combine.choose_weight(informed, other, labels)
  assert 0.5 < weight < 0.85
  losses = [combine._log_loss(s * (w * informed + (1 - w) * other), labels)
            for w in combine.WEIGHTS for s in combine.SCALES]
  assert combine._log_loss(scale * (weight * informed + (1 - weight) * other), labels) == min(
      losses)


def test_combined_runs_predict_as_they_evaluated_and_test_is_scored_only_if_asked(
    tiny_data_dir, tmp_path):
  import combine
  lstm = tiny_run(tiny_data_dir, tmp_path, "lstm")
  bag = tiny_run(tiny_data_dir, tmp_path, "bag", ngram_order=2, ngram_buckets=1024,
                 ngram_bag="naive_bayes", seed=8)
  result = combine.combine(lstm, bag, evaluate_test=True)
  runs = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("lstm", "bag")]
  for key, run in zip(("first", "second"), runs, strict=True):
    assert result[f"{key}_test_accuracy"] == pytest.approx(run["test_accuracy"], abs=1e-6)
    assert result[f"{key}_validation_accuracy"] == pytest.approx(
        run["best_epoch_validation_accuracy"], abs=1e-6)
  without_test = combine.combine(lstm, bag, evaluate_test=False)
  assert not any(key.startswith(("test", "first_test", "second_test")) for key in without_test)
  assert without_test["weight"] == result["weight"]


def test_runs_with_other_validation_reviews_are_not_combined(tiny_data_dir, tmp_path):
  import combine
  first = tiny_run(tiny_data_dir, tmp_path, "first")
  second = tiny_run(tiny_data_dir, tmp_path, "second", validation_size=40)
  with pytest.raises(ValueError, match="different validation reviews"):
    combine.combine(first, second, evaluate_test=False)
