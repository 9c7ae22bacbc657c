"""A run's workdir: what it holds, whether a config may resume it, and its metrics history.

  config.json, vocabulary.json   what the run computes, and how it reads text
  init_from.json                 with init_from: the language model checkpoint it started from
  metrics.jsonl, results.json    one record per epoch; the summary at the end
  checkpoints/, best_checkpoint/ orbax checkpoints (best_checkpoint/ only with validation)
  events.out.tfevents.*          TensorBoard summaries
"""

import json
import os
import shutil
from typing import Any

import ml_collections

from seqjax import config as config_lib
from seqjax import files
from seqjax.errors import ConfigError, DataError

CONFIG = "config.json"
VOCABULARY = "vocabulary.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
INIT_FROM = "init_from.json"
CHECKPOINTS = "checkpoints"
BEST_CHECKPOINT = "best_checkpoint"
# What a run writes; `--overwrite` removes these (and TensorBoard events) and nothing else.
RUN_FILES = (CONFIG, VOCABULARY, INIT_FROM, METRICS, RESULTS, CHECKPOINTS, BEST_CHECKPOINT,
             f"{CHECKPOINTS}-unreadable", f"{BEST_CHECKPOINT}-unreadable")

# Keys that change how a run is named, watched or stored, not what it computes: a workdir may
# be resumed with other values for these (a renamed config file reads its old runs).
# num_epochs is one of them because each epoch's data order depends only on (seed, epoch): a
# run extended to more epochs continues exactly as a longer run would have (unless a
# learning-rate schedule spans num_epochs).
NON_RESULT_KEYS = frozenset({"name", "data_dir", "cache_dir", "download", "num_epochs",
                             "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                             "eval_batch_size"})


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was written with; keys added to seqjax since then at their defaults."""
  path = os.path.join(workdir, CONFIG)
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"Cannot read {path} ({e}). The workdir must be that of a seqjax "
                    "training run (it holds config.json, vocabulary.json and checkpoints/).") from e
  config = config_lib.base_config()
  unknown = sorted(set(saved) - set(config))
  if unknown:
    raise DataError(f"{path} has keys this seqjax does not know: {', '.join(unknown)}.")
  config.update(saved)
  return config


def check_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir that was written by a config computing something else."""
  if not os.path.exists(os.path.join(workdir, CONFIG)):
    return
  previous = json.loads(read_config(workdir).to_json())
  current = json.loads(config.to_json())
  ignored = NON_RESULT_KEYS
  if current["learning_rate_schedule"] != "constant":
    ignored = ignored - {"num_epochs"}
  differing = sorted(k for k in set(previous) | set(current)
                     if k not in ignored and previous.get(k) != current.get(k))
  if differing:
    changes = ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in differing)
    raise ConfigError(f"The workdir {workdir} holds a run of another config ({changes}). "
                      "Use a new --workdir, or pass --overwrite to delete that run and start "
                      "over.")


def clear(workdir: str) -> None:
  """Removes a previous run's files from `workdir`."""
  if not os.path.isdir(workdir):
    return
  for name in os.listdir(workdir):
    path = os.path.join(workdir, name)
    if name in RUN_FILES or name.startswith("events.out.tfevents"):
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def write_json(path: str, value: Any) -> None:
  with files.atomic_open(path) as f:
    json.dump(value, f, indent=2)
    f.write("\n")


def read_history(workdir: str, last_epoch: int) -> list[dict]:
  """The per-epoch records of metrics.jsonl up to `last_epoch` (those a checkpoint covers)."""
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if r["epoch"] <= last_epoch]


def write_history(workdir: str, history: list[dict]) -> None:
  with files.atomic_open(os.path.join(workdir, METRICS)) as f:
    f.writelines(json.dumps(r) + "\n" for r in history)


def best_epoch(history: list[dict]) -> dict:
  """The record with the highest validation accuracy, or a language model's with the lowest
  validation perplexity; the earliest of equals."""
  if "validation_perplexity" in history[0]:
    return min(history, key=lambda r: (r["validation_perplexity"], r["epoch"]))
  return max(history, key=lambda r: (r["validation_accuracy"], -r["epoch"]))
