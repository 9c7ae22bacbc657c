"""Times seqjax's native LSTM kernel (seqjax/native_lstm.cc) on the tutorial's shapes.

  python benchmarks/lstm_kernel.py

1. The per-step matmul, (rows, 100) @ (100, 400), on one thread: the kernel's micro-kernel
   against the BLAS sgemm that scipy exports (OpenBLAS; the one jaxlib's LAPACK kernels call),
   for 32, 64 and 128 rows (a 64 or 256 batch split over 2 cores, and unsplit). CPU time of
   the calling thread, best of 5 runs of 2000 calls.
2. The kernel's whole passes over 500 steps at E = 32, H = 100 (input projection included), as
   the train step (B = 64) and inference (B = 256) call them, and a training pass of
   `models.lstm_layer` (the forward, the backward loop and the weights' gradients): wall time,
   median of `repeats` (the argument, default 10) calls, with all threads.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # BLAS on one thread, as the micro-kernel.

import ctypes  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
UNITS, STEPS, FEATURES = 100, 500, 32

HARNESS = r"""
#include "SOURCE"
#include <time.h>
typedef void Sgemm(const char*, const char*, const int*, const int*, const int*, const float*,
                   const float*, const int*, const float*, const int*, const float*, float*,
                   const int*);
static double Now() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
// out[0], out[1]: seconds per z = xw + h @ w, (rows, 4H), by the micro-kernel and by sgemm.
extern "C" void Compare(void* sgemm_pointer, int rows, int units, int calls, double* out) {
  Sgemm* sgemm = reinterpret_cast<Sgemm*>(sgemm_pointer);
  const int G = 4 * units, Gp = Padded(G);
  std::vector<float> w(units * G), h(rows * units), z(rows * Gp), xw(rows * G, 0.5f);
  for (size_t i = 0; i < w.size(); ++i) w[i] = (i % 13) * 0.01f;
  for (size_t i = 0; i < h.size(); ++i) h[i] = (i % 7) * 0.1f;
  const std::vector<float> packed = Pack(w.data(), units, G, false);
  double start = Now();
  for (int call = 0; call < calls; ++call) {
    for (long r = 0; r < rows; ++r) std::memcpy(&z[r * Gp], &xw[r * G], G * sizeof(float));
    Matmul(rows, units, h.data(), units, packed.data(), Gp, z.data(), Gp, true);
  }
  out[0] = (Now() - start) / calls;
  const float one = 1.0f;
  const char no = 'N';
  start = Now();
  for (int call = 0; call < calls; ++call) {  // Row-major z = xw + h w is z^T = w^T h^T + xw^T.
    std::memcpy(z.data(), xw.data(), rows * G * sizeof(float));
    sgemm(&no, &no, &G, &rows, &units, &one, w.data(), &G, h.data(), &units, &one, z.data(), &G);
  }
  out[1] = (Now() - start) / calls;
}
"""


def _sgemm_pointer() -> int:
  from scipy.linalg import cython_blas
  capsule = cython_blas.__pyx_capi__["sgemm"]
  api = ctypes.pythonapi
  api.PyCapsule_GetName.restype, api.PyCapsule_GetName.argtypes = ctypes.c_char_p, [
      ctypes.py_object]
  api.PyCapsule_GetPointer.restype = ctypes.c_void_p
  api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
  return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))


def build_harness(code: str) -> ctypes.CDLL:
  """`code`, C++ in which SOURCE stands for native_lstm.cc's path, compiled as the kernel is
  and loaded."""
  from seqjax import native_lstm
  with tempfile.TemporaryDirectory() as tmp:
    source = pathlib.Path(tmp, "harness.cc")
    source.write_text(code.replace("SOURCE", str(native_lstm.SOURCE)))
    library = pathlib.Path(tmp, "harness.so")
    subprocess.run(native_lstm.compile_command(library, source=source), check=True)
    return ctypes.CDLL(str(library))


def compare_matmuls() -> None:
  harness = build_harness(HARNESS)
  out = (ctypes.c_double * 2)()
  for rows in (32, 64, 128):
    best = [float("inf")] * 2
    for _ in range(5):
      harness.Compare(ctypes.c_void_p(_sgemm_pointer()), rows, UNITS, 2000, out)
      best = [min(b, o) for b, o in zip(best, out, strict=True)]
    flops = 2 * rows * UNITS * 4 * UNITS
    print(f"({rows:3d}, {UNITS}) @ ({UNITS}, {4 * UNITS}): micro-kernel "
          f"{best[0] * 1e6:6.1f} us ({flops / best[0] / 1e9:4.0f} GFLOP/s), BLAS sgemm "
          f"{best[1] * 1e6:6.1f} us ({flops / best[1] / 1e9:4.0f} GFLOP/s)", flush=True)


def time_passes(repeats: int) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from seqjax import models, native_lstm
  if native_lstm.unavailable_reason():
    sys.exit(f"The kernel is unavailable: {native_lstm.unavailable_reason()}")

  def median_seconds(fn) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - start)
    return statistics.median(times)

  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape) / 10, jnp.float32)
  recurrent_kernel, kernel, bias = normal(UNITS, 4 * UNITS), normal(FEATURES, 4 * UNITS), normal(
      4 * UNITS)
  for batch in (64, 256):
    inputs = normal(STEPS, batch, FEATURES) * 10
    run = jax.jit(lambda inputs, residuals: native_lstm.forward(
        None, recurrent_kernel, None, None, False, sequences=False, residuals=residuals,
        projection=(inputs, kernel, bias)), static_argnums=1)
    loss = lambda *weights: models.lstm_layer(inputs, *weights, None, None, False, False).sum()
    train = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    times = {"inference forward": median_seconds(lambda: run(inputs, False)),
             "training forward (with residuals)": median_seconds(lambda: run(inputs, True)),
             "training forward and backward": median_seconds(
                 lambda: train(kernel, bias, recurrent_kernel))}
    for name, seconds in times.items():
      print(f"B={batch:3d} T={STEPS} H={UNITS} {name:34s} {seconds * 1e3:6.1f} ms "
            f"({seconds / STEPS * 1e6:5.1f} us a step)", flush=True)


if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))
  compare_matmuls()
  time_passes(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
