"""How fast an exact LSTM could possibly train here: two bounds, each a floor on a step's time.

  python benchmarks/serial_bound.py        # after benchmarks/benchmark.py wrote results.json

1. The chain. An LSTM's state at step t needs the state at t-1 through a (B, H) @ (H, 4H)
   matmul, so a training step over T steps holds at least T dependent matmuls forward and T
   backward (the state's gradient, (B, 4H) @ (4H, H)), and inference T forward; none can run
   in parallel over time. This script times those chains with one cheap elementwise op per step
   and nothing else: no embedding, input projection, gates, weight gradients or optimizer. It
   times them in JAX (lax.scan, compiled), in PyTorch (if installed) and with seqjax's native
   micro-kernel (native_lstm.cc's Matmul, one thread), on all cores, and on one core with half
   the batch (as if the batch were split over the cores, with no cost to split it), and keeps
   the fastest. A BiLSTM has two chains, which may also run one per core.
2. The arithmetic. Every matmul of the step, the chain's and the rest (the input projection,
   the convolution, and in training the gradients of inputs and weights: three times the
   forward pass's), at the fastest rate any chain above reached on one core, on every core.
   Where the LSTM reads the embedded words unchanged (no dropout between: every model at
   inference, `lstm` in training too), the input projection is counted the cheaper exact way:
   the vocabulary's embeddings projected once, (V, E) @ (E, 4H), rather than every token's;
   likewise the conv, which always reads them unchanged: (V, E) @ (E, 3F), each word's
   contribution at each of its taps, rather than every step's (3E) @ (3E, F).

The slower of the two bounds from above what any exact implementation of the five tutorial
models can reach on this machine. Set beside the targets of the speed issue (2x the best
peer's training examples/s for lstm and bilstm, 1.5x for the others, 1.5x for inference), with
the peers' figures from benchmarks/results.json, they say whether a target is reachable at all.
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import benchmark  # benchmarks/benchmark.py, beside this script.

ROOT = pathlib.Path(__file__).resolve().parent.parent
UNITS, TRAIN_BATCH, INFER_BATCH = 100, 64, 256
LENGTH, EMBEDDING, FILTERS, WIDTH = 500, 32, 32, 3  # The tutorial's; FILTERS, WIDTH: its conv.
VOCABULARY = 5000
FRAMEWORKS = ("jax", "torch", "native")
# Model -> (time steps, chains per step, the training target's ratio): the conv front end
# halves the steps, the BiLSTM has two chains.
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


NATIVE_CHAIN = r"""
#include "SOURCE"
#include <chrono>
// Seconds of `steps` dependent steps on this thread: forward h = tanh((h @ w)[:, :H]),
// backward dz = tile(tanh(dz @ w^T), 4) (w^T packed once, as the kernel packs it).
extern "C" double NativeChain(int backward, int rows, int units, int steps) {
  const long in = backward ? 4 * units : units, out = backward ? units : 4 * units;
  const long padded = Padded(out);
  std::vector<float> w(in * out);
  for (size_t i = 0; i < w.size(); ++i) w[i] = ((i % 13) - 6.0f) * 0.01f;
  const std::vector<float> packed = Pack(w.data(), in, out, false);
  std::vector<float> x(rows * in, 0.1f), y(rows * padded);
  const auto start = std::chrono::steady_clock::now();
  for (int step = 0; step < steps; ++step) {
    Matmul(rows, in, x.data(), in, packed.data(), padded, y.data(), padded, false);
    for (long r = 0; r < rows; ++r) {
      float* xr = &x[r * in];
      for (long j = 0; j < units; ++j) xr[j] = Tanh(y[r * padded + j]);
      for (long j = units; j < in; ++j) xr[j] = xr[j - units];
    }
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
"""


def time_chains(framework: str, batch: int, steps: int, repeats: int) -> dict:
  """Median seconds of the forward and the backward chain, in this process."""
  import numpy as np
  if framework == "native":
    import ctypes

    import lstm_kernel
    chain = lstm_kernel.build_harness(NATIVE_CHAIN).NativeChain
    chain.restype = ctypes.c_double
    return {part: _median_seconds(lambda b=backward: chain(b, batch, UNITS, steps), repeats)
            for part, backward in (("forward", 0), ("backward", 1))}
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
  for framework in FRAMEWORKS:
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
  """Model -> (best other framework's training ex/s, its inference ex/s), from benchmark.py's
  results file."""
  return benchmark.best_peers(json.loads(results_file.read_text())["results"])


def step_flops(model: str, batch: int, training: bool) -> float:
  """The multiply-adds (x2) of every matmul in a step: per LSTM chain 2 T B H 4H forward for
  the recurrence, and 2 T B E 4H for the input projection, or 2 V E 4H where the LSTM reads
  the embedding unchanged; the conv's 2 V E (3 F); training x3."""
  steps, chains, _ = MODELS[model]
  reads_embedding = model != "cnn_lstm" and (not training or model == "lstm")
  projected = VOCABULARY if reads_embedding else steps * batch
  forward = chains * 2 * (steps * batch * UNITS + projected * EMBEDDING) * 4 * UNITS
  if model == "cnn_lstm":
    forward += 2 * VOCABULARY * EMBEDDING * WIDTH * FILTERS
  return 3 * forward if training else forward


def fastest_rate(times: dict) -> float:
  """The most FLOP/s any chain measured on one core reached."""
  return max(2 * batch * UNITS * 4 * UNITS * steps / t[part]
             for (_, cores, batch, steps), t in times.items() if cores == "one"
             for part in ("forward", "backward"))


def bound(times: dict, model: str, batch: int, training: bool) -> dict:
  """Examples/s at most: the chain's bound, the arithmetic's, and the slower of the two."""
  steps, chains, _ = MODELS[model]
  chain_s, way = fastest_step(times, steps, chains, batch,
                              ("forward", "backward") if training else ("forward",))
  arithmetic_s = step_flops(model, batch, training) / (os.cpu_count() * fastest_rate(times))
  return {"chain": batch / chain_s, "chain_way": way, "arithmetic": batch / arithmetic_s,
          "bound": batch / max(chain_s, arithmetic_s)}


def _against_target(bound_: dict, target: float | None, ratio: float) -> str:
  """Table cells: the two bounds, the slower, the target and whether the bound reaches it."""
  cells = (f"{bound_['chain']:.0f} ({bound_['chain_way']}) | {bound_['arithmetic']:.0f} | "
           f"**{bound_['bound']:.0f}**")
  if target is None:
    return cells + " | — | —"
  return cells + f" | {target:.0f} ({ratio}x) | {'yes' if bound_['bound'] >= target else '**no**'}"


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
    times = {}
    has_torch = subprocess.run([sys.executable, "-c", "import torch"],
                               capture_output=True).returncode == 0
    for framework in (f for f in FRAMEWORKS if f != "torch" or has_torch):
      for steps in sorted({s for s, _, _ in MODELS.values()}):
        for cores, batch in [("all", TRAIN_BATCH), ("one", TRAIN_BATCH // 2),
                             ("one", TRAIN_BATCH), ("all", INFER_BATCH),
                             ("one", INFER_BATCH // 2)]:
          if framework == "native" and cores == "all":
            continue  # The kernel's way to use every core is the split batch.
          t = measure(framework, cores, batch, steps, FLAGS.repeats)
          if t:
            times[(framework, cores, batch, steps)] = t
            print(f"{framework:6s} {cores} core(s) batch {batch:3d} steps {steps}: forward "
                  f"{1e3 * t['forward']:.1f} ms, backward {1e3 * t['backward']:.1f} ms",
                  flush=True)
    peers = best_peers(pathlib.Path(FLAGS.results))
    print(f"Fastest rate on one core: {fastest_rate(times) / 1e9:.0f} GFLOP/s")
    header = ("chain bound ex/s (fastest way) | arithmetic bound ex/s | bound ex/s | "
              "target: best peer x ratio | reachable")
    lines = [f"| model | training: {header} | inference: {header} |", "|---" * 11 + "|"]
    report = []
    for model, (_, _, ratio) in MODELS.items():
      train = bound(times, model, TRAIN_BATCH, training=True)
      infer = bound(times, model, INFER_BATCH, training=False)
      row = {"model": model, "train": train, "infer": infer}
      if model in peers:
        row["train_target"] = ratio * peers[model][0]
        row["infer_target"] = INFER_TARGET * peers[model][1]
      report.append(row)
      lines.append(f"| {model} | {_against_target(train, row.get('train_target'), ratio)} | "
                   f"{_against_target(infer, row.get('infer_target'), INFER_TARGET)} |")
    pathlib.Path(FLAGS.output).write_text(json.dumps(
        {"machine": f"{os.cpu_count()} cores", "units": UNITS,
         "fastest_gflops_one_core": fastest_rate(times) / 1e9, "chains": {
             " ".join(map(str, k)): v for k, v in times.items()}, "models": report},
        indent=2) + "\n")
    print("\n".join(lines))

  app.run(run)


if __name__ == "__main__":
  main()
