"""How fast an exact LSTM could possibly train here: its chain of dependent matmuls, alone.

  python benchmarks/serial_bound.py        # after benchmarks/benchmark.py wrote results.json

An LSTM's state at step t needs the state at t-1 through a (B, H) @ (H, 4H) matmul, so a
training step over T steps holds at least T dependent matmuls forward and T backward (the
state's gradient, (B, 4H) @ (4H, H)), and inference T forward; none can run in parallel over
time. This script times those chains with one cheap elementwise op per step and nothing else:
no embedding, input projection, gates, weight gradients or optimizer. It times them in JAX
(lax.scan, compiled) and in PyTorch (if installed), on all cores, and on one core with half
the batch (as if the batch were split over the cores, with no cost to split it), and keeps the
fastest. A BiLSTM has two chains, which may also run one per core.

So the figures bound from above what any exact implementation of the five tutorial models can
reach on this machine. Set beside the targets of the speed issue (2x the best peer's training
examples/s for lstm and bilstm, 1.5x for the others, 1.5x for inference), with the peers'
figures from benchmarks/results.json, they say whether a target is reachable at all.
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
UNITS, TRAIN_BATCH, INFER_BATCH = 100, 64, 256
# Model -> (time steps, chains per step): the conv front end halves the steps, the BiLSTM has
# two; and the target ratios (training, inference).
MODELS = {"lstm": (500, 1, 2.0), "lstm_dropout": (500, 1, 1.5),
          "lstm_recurrent_dropout": (500, 1, 1.5), "bilstm": (500, 2, 2.0),
          "cnn_lstm": (250, 1, 1.5)}
INFER_TARGET = 1.5


def _median_seconds(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_chains(framework: str, batch: int, steps: int, repeats: int) -> dict:
  """Median seconds of the forward and the backward chain, in this process."""
  import numpy as np
  rng = np.random.default_rng(0)
  w = (0.1 * rng.standard_normal((UNITS, 4 * UNITS))).astype(np.float32)
  h0 = rng.standard_normal((batch, UNITS)).astype(np.float32)
  dz0 = rng.standard_normal((batch, 4 * UNITS)).astype(np.float32)
  if framework == "jax":
    import jax
    import jax.numpy as jnp

    @jax.jit
    def forward(h, w):
      return jax.lax.scan(lambda h, _: (jnp.tanh((h @ w)[:, :UNITS]), None), h, None,
                          length=steps)[0]

    @jax.jit
    def backward(dz, w):
      return jax.lax.scan(lambda dz, _: (jnp.tile(jnp.tanh(dz @ w.T), (1, 4)), None), dz, None,
                          length=steps)[0]

    h0, dz0, w = map(jnp.asarray, (h0, dz0, w))
    run_forward = lambda: forward(h0, w).block_until_ready()
    run_backward = lambda: backward(dz0, w).block_until_ready()
  else:
    import torch
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    h0, dz0, w = map(torch.from_numpy, (h0, dz0, w))
    wt = w.t().contiguous()

    @torch.no_grad()
    def run_forward():
      h = h0
      for _ in range(steps):
        h = torch.tanh((h @ w)[:, :UNITS])
      return h

    @torch.no_grad()
    def run_backward():
      dz = dz0
      for _ in range(steps):
        dz = torch.tanh(dz @ wt).repeat(1, 4)
      return dz

  return {"forward": _median_seconds(run_forward, repeats),
          "backward": _median_seconds(run_backward, repeats)}


def measure(framework: str, cores: str, batch: int, steps: int, repeats: int) -> dict | None:
  """time_chains in a fresh process on all cores or on core 0 alone; None if it fails."""
  code = (f"import os, json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
          + ("os.sched_setaffinity(0, {0}); " if cores == "one" else "")
          + "import serial_bound as s; "
          + f"print(json.dumps(s.time_chains({framework!r}, {batch}, {steps}, {repeats})))")
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  if result.returncode:
    print(f"{framework} ({cores} core(s), batch {batch}) failed:\n{result.stderr[-1500:]}",
          file=sys.stderr)
    return None
  return json.loads(result.stdout.strip().splitlines()[-1])


def fastest_step(times: dict, steps: int, chains: int, batch: int, parts: tuple[str, ...]):
  """Least seconds per batch over the ways to lay `chains` chains of `batch` on the cores."""
  ways = {}
  for framework in ("jax", "torch"):
    t = {key: sum(times[key][p] for p in parts) for key in times
         if key[0] == framework and key[3] == steps}
    if (framework, "all", batch, steps) in t:
      ways[f"{framework}, all cores"] = chains * t[(framework, "all", batch, steps)]
    if (framework, "one", batch // 2, steps) in t:
      ways[f"{framework}, batch split over 2 cores"] = chains * t[(framework, "one", batch // 2,
                                                                      steps)]
    if chains == 2 and (framework, "one", batch, steps) in t:
      ways[f"{framework}, one direction per core"] = t[(framework, "one", batch, steps)]
  way = min(ways, key=ways.get)
  return ways[way], way


def best_peers(results_file: pathlib.Path) -> dict:
  """Model -> (best other framework's training ex/s, its inference ex/s)."""
  rows = json.loads(results_file.read_text())["results"]
  best = {}
  for r in rows:
    if r["framework"] != "seqjax":
      train, infer = best.get(r["model"], (0.0, 0.0))
      best[r["model"]] = (max(train, r["train_examples_per_second"]),
                          max(infer, r["infer_examples_per_second"]))
  return best


def _against_target(row: dict, key: str, ratio: float) -> str:
  """Two table cells: the target, and whether the bound reaches it."""
  if key + "_target" not in row:
    return "— | —"
  reachable = "yes" if row[key + "_bound"] >= row[key + "_target"] else "**no**"
  return f"{row[key + '_target']:.0f} ({ratio}x) | {reachable}"


def main() -> None:
  from absl import app, flags
  flags.DEFINE_integer("repeats", 10, "Timed runs of each chain (after one warm-up run).")
  flags.DEFINE_string("results", str(ROOT / "benchmarks" / "results.json"),
                      "benchmarks/benchmark.py's JSON, for the peers' figures.")
  flags.DEFINE_string("output", str(ROOT / "benchmarks" / "serial_bound.json"), "JSON output.")

  def run(argv):
    del argv
    FLAGS = flags.FLAGS
    if os.cpu_count() != 2:
      print(f"Note: this machine has {os.cpu_count()} cores; the split ways assume 2.")
    frameworks = ["jax"] + (["torch"] if subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True).returncode == 0 else [])
    times = {}
    for framework in frameworks:
      for steps in sorted({s for s, _, _ in MODELS.values()}):
        for cores, batch in [("all", TRAIN_BATCH), ("one", TRAIN_BATCH // 2),
                             ("one", TRAIN_BATCH), ("all", INFER_BATCH),
                             ("one", INFER_BATCH // 2)]:
          t = measure(framework, cores, batch, steps, FLAGS.repeats)
          if t:
            times[(framework, cores, batch, steps)] = t
            print(f"{framework:5s} {cores} core(s) batch {batch:3d} steps {steps}: forward "
                  f"{1e3 * t['forward']:.1f} ms, backward {1e3 * t['backward']:.1f} ms",
                  flush=True)
    peers = best_peers(pathlib.Path(FLAGS.results))
    lines = ["| model | training bound ex/s (fastest way) | target: best peer x ratio "
             "| reachable | inference bound ex/s | target | reachable |", "|---" * 7 + "|"]
    report = []
    for model, (steps, chains, ratio) in MODELS.items():
      train_s, train_way = fastest_step(times, steps, chains, TRAIN_BATCH,
                                        ("forward", "backward"))
      infer_s, infer_way = fastest_step(times, steps, chains, INFER_BATCH, ("forward",))
      row = {"model": model, "train_bound": TRAIN_BATCH / train_s, "train_way": train_way,
             "infer_bound": INFER_BATCH / infer_s, "infer_way": infer_way}
      if model in peers:
        row["train_target"] = ratio * peers[model][0]
        row["infer_target"] = INFER_TARGET * peers[model][1]
      report.append(row)
      lines.append(f"| {model} | {row['train_bound']:.0f} ({train_way}) | "
                   f"{_against_target(row, 'train', ratio)} | {row['infer_bound']:.0f} "
                   f"({infer_way}) | {_against_target(row, 'infer', INFER_TARGET)} |")
    pathlib.Path(FLAGS.output).write_text(json.dumps(
        {"machine": f"{os.cpu_count()} cores", "units": UNITS, "chains": {
            " ".join(map(str, k)): v for k, v in times.items()}, "models": report},
        indent=2) + "\n")
    print("\n".join(lines))

  app.run(run)


if __name__ == "__main__":
  main()
