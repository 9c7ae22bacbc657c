"""The native LSTM kernel computes what the nn.scan path computes, and is chosen as configured."""

import itertools
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import PROJECT_ROOT
from seqjax import models, native_lstm
from seqjax.errors import ConfigError, UserError

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None,
    reason="no C++ compiler: the native LSTM kernel cannot be built (seqjax scans instead)")

# (steps, batch, units): odd batches, units off the 8- and 16-float vector widths, one step.
SHAPES = [(1, 3, 5), (9, 1, 4), (13, 5, 13), (17, 33, 37), (6, 64, 100)]
FLAGS = list(itertools.product([False, True], repeat=4))  # masked, dropout, reverse, sequences


def use(monkeypatch, path: str) -> None:
  monkeypatch.setenv(native_lstm.KERNEL_ENV, path)


def recurrence_inputs(steps, batch, units, masked, dropout, seed=0):
  """Random xw, a recurrent kernel of an LSTM's scale, right padding to lengths 0..steps with a
  hole in one row, and a recurrent dropout mask (rate 0.5)."""
  rng = np.random.default_rng(seed)
  xw = rng.normal(size=(steps, batch, 4 * units)).astype(np.float32)
  recurrent_kernel = (rng.normal(size=(units, 4 * units)) / np.sqrt(units)).astype(np.float32)
  mask = None
  if masked:
    lengths = rng.integers(0, steps + 1, batch)
    lengths[0] = steps  # One full row; the others anything, empty ones included.
    mask = np.arange(steps)[:, None] < lengths[None, :]
    if steps > 2:
      mask[steps // 2, 0] = False  # Padding inside a sequence, too.
  recurrent_mask = (rng.choice([0.0, 2.0], size=(batch, units)).astype(np.float32)
                    if dropout else None)
  return xw, recurrent_kernel, mask, recurrent_mask


def outputs_and_gradients(monkeypatch, path, xw, recurrent_kernel, mask, recurrent_mask,
                          reverse, sequences):
  """lstm_recurrence's output and the gradients of a random projection of it to xw and the
  recurrent kernel, on `path`."""
  use(monkeypatch, path)

  def run(xw, recurrent_kernel):
    return models.lstm_recurrence(xw, recurrent_kernel, mask, recurrent_mask, reverse, sequences)

  out = run(xw, recurrent_kernel)
  weights = np.random.default_rng(1).normal(size=out.shape).astype(np.float32)
  grads = jax.grad(lambda *a: jnp.sum(run(*a) * weights), argnums=(0, 1))(xw, recurrent_kernel)
  return [np.asarray(out), *map(np.asarray, grads)]


@pytest.mark.parametrize("shape, flags",
                         [(SHAPES[i % len(SHAPES)], f) for i, f in enumerate(FLAGS)]
                         + [(SHAPES[0], (True, True, True, True)),
                            (SHAPES[-1], (True, True, False, False))])
def test_kernel_equals_the_scan_outputs_and_gradients(monkeypatch, shape, flags):
  masked, dropout, reverse, sequences = flags
  inputs = recurrence_inputs(*shape, masked, dropout)
  native = outputs_and_gradients(monkeypatch, "native", *inputs, reverse, sequences)
  scan = outputs_and_gradients(monkeypatch, "scan", *inputs, reverse, sequences)
  for got, want in zip(native, scan, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if shape[0] > 1:
    assert np.abs(scan[2]).max() > 0.1  # The recurrent kernel's gradient is not trivially 0.


@pytest.mark.parametrize("shape, flags", [((20, 37, 13), (True, True, False, False)),
                                          ((20, 37, 13), (True, False, True, True)),
                                          ((1, 3, 5), (False, True, True, False)),
                                          ((9, 70, 100), (False, False, False, True))])
def test_layer_gradients_summed_in_the_kernel_equal_the_scan_path(monkeypatch, shape, flags):
  """lstm_layer, whose weights' gradients the kernel sums itself (over chunks of 16 rows and
  blocks of steps), against the scan path's: inputs, kernel, bias and recurrent kernel."""
  masked, dropout, reverse, sequences = flags
  steps, batch, units = shape
  xw, recurrent_kernel, mask, recurrent_mask = recurrence_inputs(*shape, masked, dropout)
  rng = np.random.default_rng(2)
  inputs = rng.normal(size=(steps, batch, 6)).astype(np.float32)
  kernel = (rng.normal(size=(6, 4 * units)) / 3).astype(np.float32)
  bias = rng.normal(size=4 * units).astype(np.float32)

  def gradients(path):
    use(monkeypatch, path)
    run = lambda *weights: models.lstm_layer(*weights[:3], weights[3], mask, recurrent_mask,
                                             reverse, sequences)
    out = run(inputs, kernel, bias, recurrent_kernel)
    weights = np.random.default_rng(1).normal(size=out.shape).astype(np.float32)
    return jax.grad(lambda *a: jnp.sum(run(*a) * weights), argnums=(0, 1, 2, 3))(
        inputs, kernel, bias, recurrent_kernel)

  for got, want in zip(gradients("native"), gradients("scan"), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_module_gradients_equal_the_scan_path(monkeypatch, bidirectional):
  """Through models.LSTM / Bidirectional with padding and both dropouts: the gradients to the
  kernel, recurrent kernel, bias and inputs."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 11, 6)).astype(np.float32)
  mask = np.arange(11)[None, :] < np.array([11, 3, 8, 1, 11, 5, 9])[:, None]
  layer = (models.Bidirectional if bidirectional else models.LSTM)(
      units=9, dropout=0.2, recurrent_dropout=0.3, return_sequences=bidirectional)
  params = layer.init(jax.random.PRNGKey(0), x, mask, train=False)["params"]
  weights = rng.normal(size=layer.apply({"params": params}, x, mask, train=False).shape)

  def gradients(path):
    use(monkeypatch, path)

    def loss(params, x):
      out = layer.apply({"params": params}, x, mask, train=True,
                        rngs={"dropout": jax.random.PRNGKey(3)})
      return jnp.sum(out * weights)

    return jax.grad(loss, argnums=(0, 1))(params, x)

  native, scan = gradients("native"), gradients("scan")
  leaves = jax.tree_util.tree_leaves_with_path(scan)
  assert len(leaves) == (7 if bidirectional else 4)
  for (path, want), got in zip(leaves, jax.tree_util.tree_leaves(native), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(path))


def looks_up_ids(hlo: str) -> bool:
  """Whether a lowered program's forward custom calls are given (T, B) ids to look up."""
  calls = [line for line in hlo.splitlines() if f"@{native_lstm.FORWARD}(" in line]
  return bool(calls) and all(re.search(r"tensor<\d+x\d+xi32>", line) for line in calls)


@pytest.mark.parametrize("bidirectional, units", [(False, 9), (True, 29), (False, 100)])
def test_embedding_lookup_gives_the_bits_of_projecting_each_token(monkeypatch, bidirectional,
                                                                  units):
  """An LSTM reading `Embedded` ids projects the table once and looks the rows up: the same
  outputs, bit for bit, as reading table[ids]; and the same gradients, to 1e-5, as the scan
  path's, though the kernel sums the table's and the input kernel's per id (here over three
  chunks of rows). Under input dropout it reads table[ids] as before."""
  use(monkeypatch, "native")
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(40, 13)).astype(np.float32))
  ids = jnp.asarray(rng.integers(0, 40, (37, 11)).astype(np.int32))
  mask = np.arange(11)[None, :] < rng.integers(1, 12, 37)[:, None]
  layer = (models.Bidirectional if bidirectional else models.LSTM)(
      units=units, dropout=0.2, recurrent_dropout=0.3, return_sequences=bidirectional)
  params = layer.init(jax.random.PRNGKey(0), table[ids], mask, train=False)["params"]
  looked_up = lambda p, t: layer.apply({"params": p}, models.Embedded(t, ids), mask, train=False)
  gathered = lambda p, t: layer.apply({"params": p}, t[ids], mask, train=False)
  assert looks_up_ids(jax.jit(looked_up).lower(params, table).as_text())
  np.testing.assert_array_equal(jax.jit(looked_up)(params, table),
                                jax.jit(gathered)(params, table))
  rngs = {"dropout": jax.random.PRNGKey(2)}  # Under input dropout it gathers: the same masks.
  np.testing.assert_array_equal(
      layer.apply({"params": params}, models.Embedded(table, ids), mask, train=True, rngs=rngs),
      layer.apply({"params": params}, table[ids], mask, train=True, rngs=rngs))

  weights = rng.normal(size=looked_up(params, table).shape)
  grad = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * weights), argnums=(0, 1))(params, table)
  native = grad(looked_up)
  use(monkeypatch, "scan")
  for got, want in zip(jax.tree_util.tree_leaves(native),
                       jax.tree_util.tree_leaves(grad(gathered)), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_classifier_looks_up_where_nothing_changes_the_words_and_the_batch_fills_the_table(
    monkeypatch):
  """Projecting a table larger than the batch's tokens would cost more than it saves; in
  training, dropout and adversarial training's perturbation change the embedded words."""
  use(monkeypatch, "native")
  plain = models.Classifier(vocab_size=40, embedding_dim=3, lstm_units=4)
  dropped = plain.clone(lstm_dropout=0.5)
  params = plain.init(jax.random.PRNGKey(0), jnp.zeros((1, 10), jnp.int32))
  few, enough = jnp.ones((3, 13), jnp.int32), jnp.ones((4, 10), jnp.int32)  # 39, 40 tokens.

  def looks_up(model, tokens, train, perturbation=None):
    run = lambda p: model.apply(p, tokens, train=train, perturbation=perturbation,
                                rngs={"dropout": jax.random.PRNGKey(1)})
    return looks_up_ids(jax.jit(run).lower(params).as_text())

  assert not looks_up(plain, few, False)
  assert looks_up(plain, enough, False) and looks_up(plain, enough, True)
  assert looks_up(dropped, enough, False) and not looks_up(dropped, enough, True)
  assert not looks_up(plain, enough, True, jnp.zeros((4, 10, 3)))


# (batch, steps, vocabulary, features, filters, kernel_size, pool_size, masked): filters off
# the 16-float vectors, even kernels, one step, pools wider than the sequence.
CONV_CASES = [(3, 11, 17, 5, 8, 3, 2, True), (5, 7, 9, 4, 37, 5, 3, False),
              (2, 1, 4, 3, 6, 3, 1, True), (4, 9, 6, 3, 20, 2, 2, True),
              (33, 20, 30, 7, 32, 3, 2, True), (2, 3, 5, 2, 16, 3, 4, False)]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_front_end_on_embedded_ids_equals_the_dense_conv(monkeypatch, case):
  """On `Embedded` ids the conv front end sums looked-up taps: its outputs and the gradients of
  the table, kernel and bias equal the dense conv's (the scan path's). Integer weights make
  ties within pooling windows common: the same step must win them."""
  batch, steps, words, features, filters, kernel_size, pool_size, masked = case
  rng = np.random.default_rng(batch)
  table = jnp.asarray(rng.integers(-2, 3, (words, features)).astype(np.float32))
  ids = jnp.asarray(rng.integers(0, words, (batch, steps)).astype(np.int32))
  mask = (jnp.asarray(np.arange(steps)[None] < rng.integers(1, steps + 1, (batch, 1)))
          if masked else None)
  front_end = models.ConvFrontEnd(filters, kernel_size, pool_size)
  params = front_end.init(jax.random.PRNGKey(0), table[ids])["params"]
  params = jax.tree_util.tree_map(
      lambda p: jnp.asarray(rng.integers(-2, 3, p.shape).astype(np.float32)), params)
  weights = rng.normal(size=(batch, steps // pool_size, filters)).astype(np.float32)

  def run(path):
    use(monkeypatch, path)
    out = lambda p, t: front_end.apply({"params": p}, models.Embedded(t, ids), mask)[0]
    text = jax.jit(out).lower(params, table).as_text()
    grads = jax.grad(lambda *a: jnp.sum(out(*a) * weights), argnums=(0, 1))(params, table)
    return native_lstm.CONV_FORWARD in text, out(params, table), grads

  native, native_out, native_grads = run("native")
  scanned, scan_out, scan_grads = run("scan")
  assert native and not scanned
  np.testing.assert_array_equal(native_out, scan_out)  # Sums of small integers: exact.
  for got, want in zip(jax.tree_util.tree_leaves(native_grads),
                       jax.tree_util.tree_leaves(scan_grads), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_classifier_convolves_ids_where_nothing_changes_the_words(monkeypatch):
  use(monkeypatch, "native")
  model = models.Classifier(vocab_size=40, embedding_dim=3, lstm_units=4, conv_filters=5)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10), jnp.int32))
  tokens = jnp.ones((4, 10), jnp.int32)

  def convolves_ids(model, train):
    run = lambda p: model.apply(p, tokens, train=train, rngs={"dropout": jax.random.PRNGKey(1)})
    return native_lstm.CONV_FORWARD in jax.jit(run).lower(params).as_text()

  assert convolves_ids(model, False) and convolves_ids(model, True)
  dropped = model.clone(embedding_dropout=0.2)
  assert convolves_ids(dropped, False) and not convolves_ids(dropped, True)


def test_an_id_outside_the_table_is_an_error_not_a_stray_read():
  table, ids = jnp.zeros((5, 3)), jnp.full((2, 4), 5, jnp.int32)
  with pytest.raises(Exception, match="an id lies outside the embedding table"):
    jax.block_until_ready(native_lstm.forward(None, jnp.zeros((2, 8)), None, None, False, False,
                                              False, (table, jnp.zeros((3, 8)), jnp.zeros(8)),
                                              ids))
  with pytest.raises(Exception, match="an id lies outside the embedding table"):
    jax.block_until_ready(native_lstm.conv_forward(jnp.zeros((5, 48)), ids, None,
                                                   jnp.zeros(16), 2))


def test_kernel_is_bitwise_deterministic(monkeypatch):
  inputs = recurrence_inputs(40, 37, 21, masked=True, dropout=True)
  first = outputs_and_gradients(monkeypatch, "native", *inputs, True, True)
  second = outputs_and_gradients(monkeypatch, "native", *inputs, True, True)
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a, b)


THREADS_SCRIPT = """
import sys, numpy as np, jax, jax.numpy as jnp
from seqjax import models
rng = np.random.default_rng(0)
xw = rng.normal(size=(30, 45, 4 * 20)).astype(np.float32)
rk = (rng.normal(size=(20, 80)) / 5).astype(np.float32)
run = lambda xw, rk: jnp.sum(models.lstm_recurrence(xw, rk, None, None, False, True) ** 2)
x, kernel, bias = xw[..., :7], rk[:7] / 2, xw[0, 0]
layer = lambda *w: jnp.sum(models.lstm_layer(*w, None, None, True, True) ** 2)
table, ids = rng.normal(size=(50, 7)).astype(np.float32), rng.integers(0, 50, (30, 45))
looked_up = lambda *w: jnp.sum(
    models.lstm_layer(*w, None, None, False, True, jnp.asarray(ids, jnp.int32)) ** 2)
front_end = models.ConvFrontEnd(32, 3, 2)
conv_params = front_end.init(jax.random.PRNGKey(0), table[ids])
convolved = lambda p, t: jnp.sum(
    front_end.apply(p, models.Embedded(t, jnp.asarray(ids, jnp.int32)))[0] ** 2)
out = [run(xw, rk), *jax.grad(run, argnums=(0, 1))(xw, rk),
       *jax.grad(layer, argnums=(0, 1, 2, 3))(x, kernel, bias, rk),
       *jax.grad(looked_up, argnums=(0, 1, 2, 3))(table, kernel, bias, rk),
       *jax.tree_util.tree_leaves(jax.grad(convolved, argnums=(0, 1))(conv_params, table))]
np.savez(sys.argv[1], *map(np.asarray, out))
"""


def test_results_do_not_depend_on_the_thread_count(tmp_path):
  """Each batch row's sums run in one fixed order, whichever thread takes the row, and the
  weights' gradients (and the per-id sums of an embedding lookup) sum fixed chunks of rows in
  a fixed order; the conv front end's backward splits the features, not the rows."""
  results = []
  for threads in (1, 4):
    path = tmp_path / f"{threads}.npz"
    env = {**os.environ, "SEQJAX_LSTM_THREADS": str(threads), native_lstm.KERNEL_ENV: "native",
           "PYTHONPATH": str(PROJECT_ROOT)}
    subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(path)], env=env, check=True)
    results.append(np.load(path))
  for key in results[0]:
    np.testing.assert_array_equal(results[0][key], results[1][key])


MATMUL_HARNESS = r"""
#include "SOURCE"
// out (rows, cols) = a (rows, depth) @ w (depth, cols), through the kernel's packing and Matmul.
extern "C" void RunMatmul(long rows, long depth, long cols, const float* a, const float* w,
                          float* out) {
  const long padded = Padded(cols);
  const std::vector<float> packed = Pack(w, depth, cols, false);
  std::vector<float> c(rows * padded);
  Matmul(rows, depth, a, depth, packed.data(), padded, c.data(), padded, false);
  for (long r = 0; r < rows; ++r) std::memcpy(out + r * cols, &c[r * padded], cols * 4);
}
"""


def cpu_has_avx512() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      return " avx512f" in f.read()
  except OSError:
    return False


@pytest.mark.skipif(not cpu_has_avx512(), reason="the CPU has no AVX-512: one micro-kernel only")
def test_avx512_and_avx2_micro_kernels_give_the_same_bits(tmp_path):
  """Each output element sums its products in k order in either build, so a machine without
  AVX-512 computes what this one does."""
  import ctypes
  builds = {}
  for name, extra in (("avx512", []), ("avx2", ["-mno-avx512f"])):
    source = tmp_path / f"{name}.cc"
    source.write_text(MATMUL_HARNESS.replace("SOURCE", str(native_lstm.SOURCE)))
    library = tmp_path / f"{name}.so"
    subprocess.run(native_lstm.compile_command(library, *extra, source=source), check=True)
    builds[name] = ctypes.CDLL(str(library)).RunMatmul
  rng = np.random.default_rng(0)
  pointer = lambda x: x.ctypes.data_as(ctypes.c_void_p)
  for rows, depth, cols in [(1, 3, 5), (7, 100, 400), (13, 37, 148), (32, 400, 100)]:
    a = rng.normal(size=(rows, depth)).astype(np.float32)
    w = rng.normal(size=(depth, cols)).astype(np.float32)
    outs = {}
    for name, run in builds.items():
      outs[name] = np.empty((rows, cols), np.float32)
      run(ctypes.c_long(rows), ctypes.c_long(depth), ctypes.c_long(cols), pointer(a), pointer(w),
          pointer(outs[name]))
    np.testing.assert_array_equal(outs["avx512"], outs["avx2"])
    np.testing.assert_allclose(outs["avx512"], a.astype(np.float64) @ w, rtol=1e-4, atol=1e-4)


def compiler_is_gcc() -> bool:
  try:
    return "Free Software Foundation" in native_lstm.compiler_version()
  except RuntimeError:
    return False


@pytest.mark.skipif(not compiler_is_gcc(), reason="reads GCC's vectorization report")
def test_gate_loops_vectorize_without_avx512(tmp_path):
  """The gates' tanh and their gradients are most of the kernel's work beside the matmuls; run
  scalar, as they did with AVX2 before -fno-trapping-math, they made inference 3x slower."""
  source = native_lstm.SOURCE.read_text().splitlines()
  after = lambda start, text: next(i for i in range(start, len(source)) if text in source[i])
  gate_step, gradients = after(0, "void GateStep("), after(0, "void GateGradients(")
  first = after(gate_step, "for (")
  loops = {first, after(first + 1, "for ("), after(gradients, "for (")}
  report = tmp_path / "report.txt"
  subprocess.run(native_lstm.compile_command(tmp_path / "kernel.so", "-mno-avx512f",
                                             f"-fopt-info-vec-optimized={report}"), check=True)
  found = re.findall(r"native_lstm\.cc:(\d+):\d+: .*loop vectorized", report.read_text())
  vectorized = {int(line) - 1 for line in found}
  assert loops <= vectorized, [source[i].strip() for i in sorted(loops - vectorized)]


def test_auto_uses_the_kernel_on_cpu_in_float32_only(monkeypatch):
  use(monkeypatch, "auto")
  assert native_lstm.path_in_use() == "native"
  assert native_lstm.enabled(jnp.float32)
  assert not native_lstm.enabled(jnp.bfloat16)
  use(monkeypatch, "scan")
  assert native_lstm.path_in_use() == "scan"


def test_unbuildable_kernel_falls_back_under_auto_and_is_an_error_under_native(monkeypatch,
                                                                               tmp_path):
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises(RuntimeError, match="no C.. compiler"):
    native_lstm._build()
  monkeypatch.setattr(native_lstm, "_load", lambda: "no C++ compiler (c++: not found)")
  use(monkeypatch, "auto")
  assert not native_lstm.enabled(jnp.float32)
  use(monkeypatch, "native")
  with pytest.raises(UserError, match="cannot be built: no C.. compiler.*SEQJAX_LSTM_KERNEL=scan"):
    native_lstm.enabled(jnp.float32)


def test_bad_kernel_choice_is_a_config_error(monkeypatch):
  use(monkeypatch, "fast")
  with pytest.raises(ConfigError, match="SEQJAX_LSTM_KERNEL='fast' is invalid.*'scan'"):
    native_lstm.enabled(jnp.float32)


def test_model_and_resume_tests_pass_on_the_scan_path_too():
  """The rest of the suite runs on the kernel (the default here); these run on the scan."""
  env = {**os.environ, native_lstm.KERNEL_ENV: "scan"}
  tests = ["tests/test_models.py",
           "tests/test_train.py::test_rerun_resumes_and_extends_to_the_same_result",
           "tests/test_robustness.py::test_sigkill_then_restart_gives_bitwise_identical_parameters"]
  result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *tests], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-3000:]
