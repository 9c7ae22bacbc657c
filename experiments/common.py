"""What the experiment scripts share: launching a run, and noting the code and machine it had."""

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

from seqjax import config as config_lib
from seqjax import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
# Keras 3 run on the same data, on a machine like ours (made outside this repository).
KERAS_REFERENCE = ROOT.parent / "shared" / "reference" / "keras_tutorial.md"


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> str:
  return f"{cpu_name()}, {os.cpu_count()} cores, no accelerator"


def git_commit() -> str:
  """The checked-out commit, marked when seqjax/ or configs/ have uncommitted changes."""
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                        text=True).stdout.strip() or "unknown"
  dirty = subprocess.run(["git", "status", "--porcelain", "seqjax", "configs"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
  return head + (" with uncommitted changes" if dirty else "")


def launch(config_file: pathlib.Path, workdir: pathlib.Path, overrides: dict) -> dict:
  """Trains (or resumes, or just reads) the run in `workdir`; its results.json, annotated.

  Each run is `python -m seqjax.main` in a fresh process. The commit and machine are noted in
  <workdir>/launch.json before it starts, and added to the returned record. A finished run is
  read only if it was trained with the same config.
  """
  launch_file = workdir / "launch.json"
  if (workdir / "results.json").exists():
    config = config_lib.from_file(config_file)
    config.update(overrides)
    workdir_lib.check_config(str(workdir), config)
  else:
    workdir.mkdir(parents=True, exist_ok=True)
    if not launch_file.exists():
      launch_file.write_text(json.dumps({"seqjax_commit": git_commit(), "machine": machine()}))
    subprocess.run([sys.executable, "-m", "seqjax.main", f"--config={config_file}",
                    f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())],
                   cwd=ROOT, check=True)
  record = json.loads((workdir / "results.json").read_text())
  record.update(json.loads(launch_file.read_text()) if launch_file.exists() else
                {"seqjax_commit": "not recorded (trained before the experiment scripts noted "
                                  "commits)"})
  return record


def mean_std(values: list[float], digits: int = 2) -> str:
  if len(values) < 2:
    return f"{values[0]:.{digits}f}" if values else "—"
  return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def per_epoch(epochs: list[dict], key: str, scale: float = 1.0, digits: int = 0) -> str:
  return " / ".join(f"{scale * e[key]:.{digits}f}" for e in epochs)
