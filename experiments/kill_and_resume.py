"""Kills a training run with SIGKILL at random moments, restarts it, and compares the result.

  TFDS_DATA_DIR=../shared/data/tfds python experiments/kill_and_resume.py \
      --config=configs/bilstm.py --workdir=runs/bilstm_killed --reference=runs/bilstm --kills=2

Each kill comes at a random moment (uniform in [--min_seconds, --max_seconds] after the start
of that attempt); after the last one the run is left to finish. The final results.json is then
compared with that of --reference, an uninterrupted run of the same config, metric by metric
(wall-clock figures aside).
"""

import json
import pathlib
import random
import signal
import subprocess
import sys
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMING_KEYS = {"train_seconds", "eval_seconds", "train_examples", "train_examples_per_second"}

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file.", required=True)
flags.DEFINE_string("workdir", None, "Workdir of the run to kill (new or resumed).", required=True)
flags.DEFINE_string("reference", None, "Workdir of an uninterrupted run.", required=True)
flags.DEFINE_integer("kills", 2, "How many times to kill the run.")
flags.DEFINE_float("min_seconds", 60, "Earliest kill, seconds after an attempt starts.")
flags.DEFINE_float("max_seconds", 600, "Latest kill, seconds after an attempt starts.")
flags.DEFINE_integer("seed", 0, "Seed of the kill times.")
flags.DEFINE_integer("checkpoint_every_steps", 50, "Passed to the run.")


def metrics(workdir: pathlib.Path) -> dict:
  results = json.loads((workdir / "results.json").read_text())
  results["epochs"] = [{k: v for k, v in e.items() if k not in TIMING_KEYS}
                       for e in results["epochs"]]
  return {k: v for k, v in results.items() if k not in TIMING_KEYS}


def main(argv):
  del argv
  rng = random.Random(FLAGS.seed)
  command = [sys.executable, "-m", "seqjax.main", f"--config={FLAGS.config}",
             f"--workdir={FLAGS.workdir}",
             f"--config.checkpoint_every_steps={FLAGS.checkpoint_every_steps}"]
  log = open(pathlib.Path(FLAGS.workdir).with_suffix(".log"), "a")
  for attempt in range(FLAGS.kills + 1):
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
    if attempt < FLAGS.kills:
      delay = rng.uniform(FLAGS.min_seconds, FLAGS.max_seconds)
      try:
        process.wait(timeout=delay)
        print(f"attempt {attempt + 1}: finished before the kill at {delay:.0f} s")
        break
      except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        print(f"attempt {attempt + 1}: SIGKILL after {delay:.0f} s", flush=True)
    else:
      start = time.time()
      if process.wait() != 0:
        sys.exit(f"The final attempt failed; see {log.name}.")
      print(f"attempt {attempt + 1}: finished in {time.time() - start:.0f} s")
  got, want = metrics(pathlib.Path(FLAGS.workdir)), metrics(pathlib.Path(FLAGS.reference))
  if got == want:
    print(f"results.json metrics identical to {FLAGS.reference}: test accuracy "
          f"{got['test_accuracy']:.4f}, test loss {got['test_loss']:.4f}.")
  else:
    sys.exit(f"results.json metrics differ:\n killed+resumed: {got}\n uninterrupted: {want}")


if __name__ == "__main__":
  app.run(main)
