"""The experiment scripts' launcher: a finished run is reused only for the config it ran."""

import json
import sys

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
