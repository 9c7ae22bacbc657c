"""Times the five tutorial models in seqjax and, where installed, in Keras 3 and PyTorch.

  python benchmarks/benchmark.py                       # seqjax, plus Keras/PyTorch if installed
  python benchmarks/benchmark.py --frameworks=seqjax --models=lstm,bilstm

Same shapes and protocol in every framework: a training step on a batch of 64 reviews of 500
token ids (Adam, binary cross-entropy), an inference pass on a batch of 256; warm-up and
compilation excluded and reported apart; the median of --steps timed calls. Each measurement
runs in a fresh process, so peak memory (the process's maximum resident set) is its own. The
whole set of measurements runs --rounds times, one round after another, and each figure is the
median over rounds: this VM's speed drifts by 10-35% over minutes, and interleaving puts every
framework through the same drift rather than one of them through a slow spell. Every
framework uses every core (JAX by default; TensorFlow and PyTorch are told so). Besides Keras 3
(TensorFlow backend, with and without XLA) and PyTorch, the peers include "flax": the
straightforward Flax model (nn.RNN over nn.OptimizedLSTMCell). seqjax runs with the malloc
settings its commands restart with (seqjax/malloc.py); every peer is timed with and without
them and keeps its better figures; --seqjax_mallocs times seqjax under other settings too
(MALLOC_ENVS). "seqjax_2dev" is seqjax with the CPU split into two XLA devices (the batch
split over the cores), and "seqjax_scan" seqjax with its LSTM on the nn.scan path rather than
the native kernel (seqjax/native_lstm.py); each row of seqjax says which path its LSTM took
("lstm_path"). Both are shown beside seqjax, as options, not counted as either. Prints
a table and the ratios of seqjax to the best other framework, and writes JSON with every
measurement.
"""

import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

from seqjax import config as config_lib
from seqjax import keras_reference, malloc

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ["lstm", "lstm_dropout", "lstm_recurrent_dropout", "bilstm", "cnn_lstm"]
TRAIN_BATCH, INFER_BATCH, LENGTH, VOCAB = 64, 256, 500, 5000

# seqjax's commands restart with malloc settings that include huge pages ("restart",
# seqjax/malloc.py); "mallopt" is what seqjax.load and train.train_and_evaluate set in-process
# without a restart, "default" glibc's own. The settings speed up other frameworks too
# (PyTorch most), so each other framework is timed with and without them, keeping its best.
MALLOC_ENVS = {"default": {"GLIBC_TUNABLES": ""}, "mallopt": {},
               "restart": {"GLIBC_TUNABLES": malloc.HUGE_PAGE_TUNABLES}}
PEER_MALLOCS = ["default", "restart"]
# seqjax_2dev: seqjax with the CPU split into one XLA device per core (data parallel over the
# cores, as train.py runs on several devices). Not what seqjax's commands do by default, so it
# is shown beside seqjax, not counted as seqjax or as a peer.
# seqjax_scan: seqjax with its LSTM on the nn.scan path instead of the native kernel (the
# reference, and the path where the kernel cannot be built), shown beside seqjax likewise.
FRAMEWORK_ENVS = {"seqjax_2dev": {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                  "seqjax_scan": {"SEQJAX_LSTM_KERNEL": "scan"}}


def _timed(fn, steps: int) -> tuple[float, float]:
  """(seconds of the first call, median seconds of the next `steps` calls)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def _batches(rng_seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(rng_seed)
  inputs = rng.integers(1, VOCAB, (TRAIN_BATCH, LENGTH)).astype(np.int32)
  labels = rng.integers(0, 2, TRAIN_BATCH).astype(np.int32)
  infer = rng.integers(1, VOCAB, (INFER_BATCH, LENGTH)).astype(np.int32)
  return inputs, labels, infer


def measure_seqjax(model_name: str, steps: int) -> dict:
  import jax
  import numpy as np

  from seqjax import models, native_lstm, parallel, train
  config = config_lib.from_file(ROOT / "configs" / f"{model_name}.py")
  inputs, labels, infer = _batches()
  model = models.create_model(config)
  # As train.py runs it: the batch split over every device, the rest replicated.
  devices = parallel.DataParallel.over_all_devices()
  malloc.keep_freed_memory(jax.default_backend())  # As train.py and predict.py do.
  state = jax.device_put(train.create_train_state(config, model, jax.random.PRNGKey(0)),
                         devices.replicated)
  step = train.jit_train_step(devices)
  batch = devices.put_batch({"inputs": inputs, "labels": labels,
                             "mask": np.ones(TRAIN_BATCH, np.float32)})
  infer = devices.put_batch({"inputs": infer})["inputs"]
  rng = jax.device_put(jax.random.PRNGKey(1), devices.replicated)
  holder = {"state": state}

  def train_once():
    holder["state"], metrics = step(holder["state"], batch, rng)
    jax.block_until_ready(metrics)

  predict = jax.jit(lambda params, x: model.apply({"params": params}, x))

  def infer_once():
    jax.block_until_ready(predict(holder["state"].params, infer))

  return {"train": _timed(train_once, steps), "infer": _timed(infer_once, steps),
          "lstm_path": native_lstm.path_in_use()}


def compile_bucket_widths(model_name: str) -> dict:
  """Compiles the train step of `<model_name>_bucketed` at every width its batches can have."""
  import jax
  import numpy as np

  from seqjax import models, train
  config = config_lib.from_file(ROOT / "configs" / f"{model_name}_bucketed.py")
  model = models.create_model(config)
  state = train.create_train_state(config, model, jax.random.PRNGKey(0))
  widths = range(config.bucket_width, config.max_length + 1, config.bucket_width)
  seconds = []
  for width in widths:
    batch = {"inputs": np.ones((TRAIN_BATCH, width), np.int32),
             "labels": np.zeros(TRAIN_BATCH, np.int32), "mask": np.ones(TRAIN_BATCH, np.float32)}
    start = time.perf_counter()
    jax.jit(train._train_step).lower(state, batch, jax.random.PRNGKey(1)).compile()
    seconds.append(time.perf_counter() - start)
  return {"model": f"{model_name}_bucketed", "widths": list(widths),
          "compile_seconds": [round(s, 2) for s in seconds]}


def measure_flax_reference(model_name: str, steps: int) -> dict:
  """The straightforward Flax model: nn.RNN over nn.OptimizedLSTMCell, as in Flax's examples.

  OptimizedLSTMCell has no recurrent dropout, so the reference leaves it out (less work than
  the tutorial's models 3 and 4).
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  class Reference(nn.Module):

    @nn.compact
    def __call__(self, tokens, train: bool):
      x = nn.Embed(VOCAB, 32)(tokens)
      rate = 0.2 if model_name != "lstm" and model_name != "cnn_lstm" else 0.0
      x = nn.Dropout(rate, deterministic=not train)(x)
      if model_name == "cnn_lstm":
        x = nn.max_pool(nn.relu(nn.Conv(32, (3,), padding="SAME")(x)), (2,), (2,))
      rnn = lambda **kw: nn.RNN(nn.OptimizedLSTMCell(100), **kw)
      if model_name == "bilstm":
        (forward, backward), _ = nn.Bidirectional(rnn(), rnn(), return_carry=True)(x)
        x = jnp.concatenate([forward[1], backward[1]], -1)  # Each carry is (c, h).
      else:
        (_, x), _ = rnn(return_carry=True)(x)
      x = nn.Dropout(0.2 if model_name == "lstm_dropout" else 0.0, deterministic=not train)(x)
      return nn.Dense(1)(x)[:, 0]

  inputs, labels, infer = _batches()
  model = Reference()
  params = model.init(jax.random.PRNGKey(0), inputs[:1], train=False)
  optimizer = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state, rng):
    def loss(params):
      logits = model.apply(params, inputs, train=True, rngs={"dropout": rng})
      return optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  holder = {"state": (params, optimizer.init(params))}

  def train_once():
    holder["state"] = step(*holder["state"], jax.random.PRNGKey(1))
    jax.block_until_ready(holder["state"])

  predict = jax.jit(lambda params, x: model.apply(params, x, train=False))
  return {"train": _timed(train_once, steps),
          "infer": _timed(lambda: np.asarray(predict(holder["state"][0], infer)), steps)}


def measure_keras(model_name: str, steps: int, xla: bool) -> dict:
  os.environ["KERAS_BACKEND"] = "tensorflow"
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count())
  tf.config.threading.set_inter_op_parallelism_threads(os.cpu_count())
  model = keras_reference.keras_model(
      config_lib.from_file(ROOT / "configs" / f"{model_name}.py"))
  model.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=xla)
  inputs, labels, infer = _batches()
  return {"train": _timed(lambda: model.train_on_batch(inputs, labels), steps),
          "infer": _timed(lambda: model.predict_on_batch(infer), steps)}


def _torch_model(model_name: str):
  import torch
  from torch import nn

  class CellLSTM(nn.Module):
    """LSTMCell loop with Keras' per-sequence input and recurrent dropout masks."""

    def __init__(self, reverse: bool):
      super().__init__()
      self.cell, self.reverse = nn.LSTMCell(32, 100), reverse

    def forward(self, x):
      b, t, e = x.shape
      h = c = x.new_zeros(b, 100)
      if self.training:
        x = x * torch.bernoulli(x.new_full((b, 1, e), 0.8)) / 0.8
        rec = torch.bernoulli(x.new_full((b, 100), 0.8)) / 0.8
      steps = range(t - 1, -1, -1) if self.reverse else range(t)
      for i in steps:
        h, c = self.cell(x[:, i], (h * rec if self.training else h, c))
      return h

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.embedding = nn.Embedding(VOCAB, 32)
      self.dropout = nn.Dropout(0.2 if model_name == "lstm_dropout" else 0.0)
      self.conv = nn.Conv1d(32, 32, 3, padding=1) if model_name == "cnn_lstm" else None
      if model_name in ("lstm_recurrent_dropout", "bilstm"):
        self.rnns = nn.ModuleList([CellLSTM(False)] + (
            [CellLSTM(True)] if model_name == "bilstm" else []))
      else:
        self.lstm = nn.LSTM(32, 100, batch_first=True)
      self.dense = nn.Linear(200 if model_name == "bilstm" else 100, 1)

    def forward(self, tokens):
      x = self.dropout(self.embedding(tokens))
      if self.conv is not None:
        x = nn.functional.max_pool1d(torch.relu(self.conv(x.transpose(1, 2))), 2).transpose(1, 2)
      if hasattr(self, "rnns"):
        x = torch.cat([rnn(x) for rnn in self.rnns], dim=-1)
      else:
        x = self.lstm(x)[1][0][-1]
      return self.dense(self.dropout(x))[:, 0]

  return Net()


def measure_torch(model_name: str, steps: int) -> dict:
  import torch
  torch.set_num_threads(os.cpu_count())
  model = _torch_model(model_name)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  inputs, labels, infer = (torch.from_numpy(a).long() for a in _batches())
  labels = labels.float()

  def train_once():
    model.train()
    optimizer.zero_grad()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs), labels)
    loss.backward()
    optimizer.step()

  def infer_once():
    model.eval()
    with torch.no_grad():
      model(infer)

  return {"train": _timed(train_once, steps), "infer": _timed(infer_once, steps)}


def run_one(framework: str, model_name: str, steps: int) -> dict:
  """Measures one (framework, model) pair in this process."""
  if framework.startswith("seqjax"):
    out = measure_seqjax(model_name, steps)
  elif framework == "flax":
    out = measure_flax_reference(model_name, steps)
  elif framework in ("keras", "keras_xla"):
    out = measure_keras(model_name, steps, xla=framework == "keras_xla")
  else:
    out = measure_torch(model_name, steps)
  (train_first, train_step), (infer_first, infer_step) = out["train"], out["infer"]
  return {"framework": framework, "model": model_name,
          "train_examples_per_second": TRAIN_BATCH / train_step,
          "infer_examples_per_second": INFER_BATCH / infer_step,
          "train_first_call_seconds": train_first, "infer_first_call_seconds": infer_first,
          "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          **({"lstm_path": out["lstm_path"]} if "lstm_path" in out else {})}


def available(framework: str) -> bool:
  module = {"seqjax": "jax", "seqjax_2dev": "jax", "seqjax_scan": "jax", "flax": "flax",
            "keras": "keras", "keras_xla": "keras", "torch": "torch"}[framework]
  return subprocess.run([sys.executable, "-c", f"import {module}"],
                        capture_output=True).returncode == 0


def main() -> None:
  from absl import app, flags
  flags.DEFINE_list("frameworks", ["seqjax", "seqjax_2dev", "seqjax_scan", "flax", "keras",
                                   "keras_xla", "torch"],
                    "What to time.")
  flags.DEFINE_list("models", MODELS, "Tutorial models to time.")
  flags.DEFINE_list("seqjax_mallocs", ["restart"], "malloc settings to time seqjax with: "
                    f"{', '.join(MALLOC_ENVS)} (benchmarks/benchmark.py's MALLOC_ENVS).")
  flags.DEFINE_integer("steps", 20, "Timed calls per measurement (after one warm-up call).")
  flags.DEFINE_integer("rounds", 3, "Times to repeat the whole set of measurements, "
                       "interleaved; each figure is the median over rounds.")
  flags.DEFINE_string("output", str(ROOT / "benchmarks" / "results.json"), "JSON output.")
  flags.DEFINE_string("one", None, "Internal: 'framework,model' to measure in this process.")
  flags.DEFINE_bool("bucket_compiles", False, "Instead: time compiling each bucketed model's "
                    "train step at each batch width it can meet.")

  def run(argv):
    del argv
    FLAGS = flags.FLAGS
    if FLAGS.one:
      print(json.dumps(run_one(*FLAGS.one.split(","), FLAGS.steps)))
      return
    if FLAGS.bucket_compiles:
      for model_name in FLAGS.models:
        r = compile_bucket_widths(model_name)
        print(f"{r['model']}: {len(r['widths'])} widths ({r['widths'][0]}-{r['widths'][-1]}), "
              f"compiled in {sum(r['compile_seconds']):.1f} s "
              f"({min(r['compile_seconds']):.1f}-{max(r['compile_seconds']):.1f} s each)",
              flush=True)
      return
    frameworks = [f for f in FLAGS.frameworks if available(f)]
    rows = []
    for round_, model_name, framework, setting in [
        (i, model_name, f, m) for i in range(FLAGS.rounds) for model_name in FLAGS.models
        for f in frameworks
        for m in (FLAGS.seqjax_mallocs if f.startswith("seqjax") else PEER_MALLOCS)]:
      env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
      env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **MALLOC_ENVS[setting],
                  **FRAMEWORK_ENVS.get(framework, {})})
      result = subprocess.run(
          [sys.executable, __file__, f"--one={framework},{model_name}",
           f"--steps={FLAGS.steps}"], env=env, capture_output=True, text=True, cwd=ROOT)
      if result.returncode:
        print(f"{framework} {model_name} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        continue
      rows.append({**json.loads(result.stdout.strip().splitlines()[-1]), "malloc": setting,
                   "round": round_})
      print(f"round {round_ + 1}/{FLAGS.rounds} {model_name:24s} {framework:10s} {setting:8s} "
            f"train {rows[-1]['train_examples_per_second']:8.1f} ex/s  "
            f"infer {rows[-1]['infer_examples_per_second']:8.1f} ex/s", flush=True)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "threads": os.cpu_count(), "steps": FLAGS.steps, "rounds": FLAGS.rounds,
              "results": rows}
    pathlib.Path(FLAGS.output).write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))

  app.run(run)


def over_rounds(rows: list[dict]) -> list[dict]:
  """One row per (model, framework, malloc): each figure's median over the rounds, the peak
  memory's maximum."""
  groups = {}
  for r in rows:
    groups.setdefault((r["model"], r["framework"], r.get("malloc")), []).append(r)
  out = []
  for group in groups.values():
    row = {**group[0], "rounds": len(group),
           "peak_memory_mb": max(r.get("peak_memory_mb", 0.0) for r in group)}
    for key in ("train_examples_per_second", "infer_examples_per_second",
                "train_first_call_seconds", "infer_first_call_seconds"):
      if key in row:
        row[key] = statistics.median(r[key] for r in group)
    out.append(row)
  return out


def best_of_mallocs(rows: list[dict]) -> dict:
  """Per (model, framework): the best training and the best inference figure over mallocs,
  each the median over rounds."""
  rows = over_rounds(rows)
  best = {}
  for r in rows:
    b = best.setdefault((r["model"], r["framework"]), dict(r))
    for key in ("train_examples_per_second", "infer_examples_per_second"):
      b[key] = max(b[key], r[key])
  return best


def best_peers(rows: list[dict]) -> dict:
  """Model -> (the best other framework's training ex/s, the best other's inference ex/s):
  over every framework but seqjax and its variants (seqjax_scan, seqjax_2dev)."""
  best = {}
  for (model, framework), r in best_of_mallocs(rows).items():
    if not framework.startswith("seqjax"):
      train, infer = best.get(model, (0.0, 0.0))
      best[model] = (max(train, r["train_examples_per_second"]),
                     max(infer, r["infer_examples_per_second"]))
  return best


def table(rows: list[dict]) -> str:
  """Markdown: examples/s per framework, and seqjax's ratio to the best other one."""
  frameworks = list(dict.fromkeys(r["framework"] for r in rows))
  best, peers = best_of_mallocs(rows), best_peers(rows)
  lines = ["| model | " + " | ".join(f"{f} train / infer ex/s" for f in frameworks)
           + " | seqjax ÷ best other: train / infer | seqjax compile s (train) | seqjax peak MB |",
           "|---" * (len(frameworks) + 4) + "|"]
  for model_name in dict.fromkeys(r["model"] for r in rows):
    by = {f: r for (m, f), r in best.items() if m == model_name}
    cells = [f"{by[f]['train_examples_per_second']:.0f} / {by[f]['infer_examples_per_second']:.0f}"
             if f in by else "—" for f in frameworks]
    ratio = "—"
    if "seqjax" in by and model_name in peers:
      best_train, best_infer = peers[model_name]
      ratio = (f"{by['seqjax']['train_examples_per_second'] / best_train:.2f} / "
               f"{by['seqjax']['infer_examples_per_second'] / best_infer:.2f}")
    seqjax = by.get("seqjax", {})
    lines.append(f"| {model_name} | " + " | ".join(cells) + f" | {ratio} | "
                 f"{seqjax.get('train_first_call_seconds', float('nan')):.1f} | "
                 f"{seqjax.get('peak_memory_mb', float('nan')):.0f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
