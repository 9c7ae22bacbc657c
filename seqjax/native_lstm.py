"""The native CPU kernels (native_lstm.cc) of the LSTM recurrence and of the conv front end
on embedded ids, built on first use.

`SEQJAX_LSTM_KERNEL` chooses the path of `models.lstm_recurrence`: 'auto' (the default) runs
the kernel where JAX computes float32 on one CPU device and the kernel builds, else the
`nn.scan` path; 'native' insists on the kernel (an error where it cannot be built; on several
devices each then runs it on the whole batch); 'scan' always scans; 'cudnn' takes
seqjax/cudnn_lstm.py's path (auto's choice on GPU). `models.ConvFrontEnd` follows the same
choice. The kernels split their work into one part per core the process may run on
($SEQJAX_LSTM_THREADS sets how many parts) and run the parts on XLA's CPU thread pool.

The kernel is compiled with the machine's C++ compiler (`$CXX`, else `c++`) the first time a
process needs it, into $XDG_CACHE_HOME/seqjax (~/.cache/seqjax), under a name that hashes the
source, the compiler's version, the flags, jax's version and the CPU's features; later
processes load that file. Building on first use rather than at install keeps the package pure
Python (no build dependencies, no jax headers at install time), follows jax upgrades, and makes
`-march=native` safe: a cache shared by different machines holds one build per CPU.
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from seqjax.errors import ConfigError, UserError

Array = jax.Array

KERNEL_ENV = "SEQJAX_LSTM_KERNEL"
MODES = ("auto", "native", "scan", "cudnn")
SOURCE = pathlib.Path(__file__).with_name("native_lstm.cc")
# -fno-trapping-math lets the compiler compute both sides of a select (the gates' tanh) and
# so vectorize those loops with AVX2 too, not only with AVX-512's masks; values are unchanged.
FLAGS = ("-O3", "-march=native", "-std=c++17", "-ffp-contract=fast", "-fno-trapping-math",
         "-fPIC", "-shared", "-pthread", "-w")
FORWARD, BACKWARD = "seqjax_lstm_forward", "seqjax_lstm_backward"
CONV_FORWARD, CONV_BACKWARD = "seqjax_conv_forward", "seqjax_conv_backward"
CONV_FEATURES_MULTIPLE = 16  # The conv kernels read features in whole vectors.


def mode() -> str:
  """$SEQJAX_LSTM_KERNEL, checked: 'auto', 'native' or 'scan'."""
  value = os.environ.get(KERNEL_ENV, "auto") or "auto"
  if value not in MODES:
    raise ConfigError(f"{KERNEL_ENV}={value!r} is invalid: use one of "
                      f"{', '.join(map(repr, MODES))} ('auto' = the fastest that applies).")
  return value


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return pathlib.Path(root) / "seqjax"


def _cpu_features() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:
    return platform.processor()


def _compiler() -> str:
  return os.environ.get("CXX", "c++")


def compiler_version() -> str:
  """What the C++ compiler says of its version; raises RuntimeError where there is none."""
  try:
    return subprocess.run([_compiler(), "--version"], capture_output=True, text=True,
                          check=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    raise RuntimeError(f"no C++ compiler ({_compiler()}: {e})") from e


def compile_command(library: os.PathLike | str, *extra_flags: str,
                    source: os.PathLike | str = SOURCE) -> list[str]:
  """The command that builds `source` (the kernel, or a file that includes it) into `library`."""
  return [_compiler(), *FLAGS, *extra_flags, f"-I{jax.ffi.include_dir()}", "-o", str(library),
          str(source)]


def _build() -> pathlib.Path:
  """The compiled kernel, from the cache or built now; raises RuntimeError saying why not."""
  version = compiler_version()
  key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(FLAGS), jax.__version__,
                                  platform.machine(), _cpu_features()]).encode()).hexdigest()
  path = _cache_dir() / f"native_lstm-{key[:20]}.so"
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  # Built beside its final name, then renamed: concurrent processes never load a partial file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
  os.close(fd)
  try:
    result = subprocess.run(compile_command(tmp), capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f"{_compiler()} failed: {result.stderr.strip()[-2000:]}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


@functools.cache
def _load() -> str | None:
  """Builds, loads and registers the kernel once per process: None, or why it is unavailable."""
  try:
    library = ctypes.cdll.LoadLibrary(str(_build()))
    for name, symbol in ((FORWARD, library.SeqjaxLstmForward),
                         (BACKWARD, library.SeqjaxLstmBackward),
                         (CONV_FORWARD, library.SeqjaxConvForward),
                         (CONV_BACKWARD, library.SeqjaxConvBackward)):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
  except (RuntimeError, OSError, AttributeError) as e:
    return str(e)
  return None


@functools.cache
def announce(message: str) -> None:
  """Logs `message` (which path the LSTM takes) once per process."""
  logging.info(message)


def unavailable_reason() -> str | None:
  """None if the kernel is built and registered in this process, else why it is not."""
  return _load()


def enabled(dtype) -> bool:
  """Whether `lstm_recurrence` runs the kernel, for computation in `dtype`; decided at trace
  time. Says once per process which path the LSTM takes."""
  chosen = mode()
  if chosen in ("scan", "cudnn"):  # cudnn_lstm handles 'cudnn'; what it cannot, scans.
    announce(f"LSTM recurrence: the nn.scan path ({KERNEL_ENV}={chosen}).")
    return False
  if jnp.dtype(dtype) != jnp.float32 or jax.default_backend() != "cpu":
    announce(f"LSTM recurrence: the nn.scan path (the native kernel is for float32 on CPU; "
              f"this is {jnp.dtype(dtype).name} on {jax.default_backend()}).")
    return False
  if chosen == "auto" and jax.device_count() > 1:
    # XLA cannot split a custom call over devices: each would run the whole batch.
    announce("LSTM recurrence: the nn.scan path, which XLA splits over the "
              f"{jax.device_count()} devices (the native kernel would run on each in full).")
    return False
  reason = _load()
  if reason is not None:
    if chosen == "native":
      raise UserError(f"{KERNEL_ENV}=native, but the native LSTM kernel cannot be built: "
                      f"{reason}. Install a C++17 compiler (or set $CXX), or use "
                      f"{KERNEL_ENV}=scan.")
    announce(f"LSTM recurrence: the nn.scan path; the native kernel is unavailable ({reason}).")
    return False
  announce("LSTM recurrence: the native CPU kernel.")
  return True


def _require() -> None:
  reason = _load()
  if reason is not None:
    raise UserError(f"The native LSTM kernel is unavailable: {reason}.")


def _optional(x: Array | None, dtype) -> Array:
  return jnp.zeros((0,), dtype) if x is None else x


def forward(xw: Array | None, recurrent_kernel: Array, mask: Array | None,
            recurrent_mask: Array | None, reverse: bool, sequences: bool, residuals: bool,
            projection: tuple[Array, Array, Array] | None = None, ids: Array | None = None
            ) -> tuple[Array, Array, Array, Array]:
  """The recurrence from a zero state: xw (T, B, 4H), recurrent_kernel (H, 4H) scaled by
  `models.gate_scale`, mask (T, B) bool, recurrent_mask (B, H) ->

  the final h (B, H); every step's h (T, B, H) if `sequences` or `residuals`; and with
  `residuals` every c (T, B, H) and the gates' tanh (T, B, 4H); the arrays not asked for are
  empty. With xw None, the kernel computes it step by step from `projection`: inputs
  (T, B, E), kernel (E, 4H) and bias (4H,), scaled likewise (xw = inputs @ kernel + bias).
  Given also ids (T, B) int32, inputs is an embedding table (V, E) and x_t = inputs[ids[t]]:
  the kernel projects the table once and looks every step's rows up, with the same bits.
  """
  _require()
  f32 = jnp.float32
  empty = jnp.zeros((0,), f32)
  inputs, kernel, bias = projection if xw is None else (empty, empty, empty)
  steps, batch = (xw if xw is not None else inputs if ids is None else ids).shape[:2]
  units = recurrent_kernel.shape[0]
  gates = 4 * units
  shape = lambda *s: jax.ShapeDtypeStruct(s, f32)
  outputs = (shape(batch, units),
             shape(steps, batch, units) if sequences or residuals else shape(0),
             shape(steps, batch, units) if residuals else shape(0),
             shape(steps, batch, gates) if residuals else shape(0))
  return jax.ffi.ffi_call(FORWARD, outputs, vmap_method="sequential")(
      _optional(xw, f32), recurrent_kernel, _optional(mask, bool),
      _optional(recurrent_mask, f32), inputs, kernel, bias, _optional(ids, jnp.int32),
      reverse=np.int32(reverse))


def backward(gate_tanh: Array, cs: Array, recurrent_kernel: Array, mask: Array | None,
             recurrent_mask: Array | None, grad: Array, reverse: bool, sequences: bool) -> Array:
  """`forward`'s gradient through the time loop: from its residuals and the gradient of its
  output, grad (B, H), or (T, B, H) with `sequences` -> d xw (T, B, 4H). The recurrent
  kernel's gradient is left to XLA (`models.recurrent_kernel_gradient`)."""
  return _backward(gate_tanh, cs, recurrent_kernel, mask, recurrent_mask, grad, reverse,
                   sequences)[0]


def backward_projected(gate_tanh: Array, cs: Array, hs: Array, recurrent_kernel: Array,
                       mask: Array | None, recurrent_mask: Array | None, grad: Array,
                       reverse: bool, sequences: bool, inputs: Array, kernel: Array,
                       ids: Array | None = None) -> tuple[Array, Array, Array, Array]:
  """`backward` where the forward pass projected `inputs` (T, B, E) with `kernel` (E, 4H), given
  also its hs (T, B, H) -> the gradients of the inputs, the kernel, the recurrent kernel and
  the bias. The kernel sums the weights' gradients itself, a few steps at a time while each
  step's d xw is in cache, and never writes d xw out. Given ids (T, B), inputs is the embedding
  table (V, E) the forward looked them up in: the kernel sums d xw per id and derives the
  table's and the kernel's gradients from those V rows."""
  return _backward(gate_tanh, cs, recurrent_kernel, mask, recurrent_mask, grad, reverse,
                   sequences, inputs, kernel, hs, ids)[1:]


def _backward(gate_tanh, cs, recurrent_kernel, mask, recurrent_mask, grad, reverse, sequences,
              inputs=None, kernel=None, hs=None, ids=None) -> tuple[Array, ...]:
  _require()
  f32 = jnp.float32
  empty = jnp.zeros((0,), f32)
  steps, batch, gates = gate_tanh.shape
  units = gates // 4
  shape = lambda *s: jax.ShapeDtypeStruct(s, f32)
  if kernel is None:
    outputs = (shape(steps, batch, gates), shape(0), shape(0), shape(0), shape(0))
  else:
    d_inputs = shape(*inputs.shape) if ids is not None else shape(steps, batch, kernel.shape[0])
    outputs = (shape(0), d_inputs, shape(*kernel.shape), shape(units, gates), shape(gates))
  return jax.ffi.ffi_call(BACKWARD, outputs, vmap_method="sequential")(
      gate_tanh, cs, recurrent_kernel, _optional(mask, bool), _optional(recurrent_mask, f32),
      empty if sequences else grad, grad if sequences else empty, _optional(kernel, f32),
      _optional(inputs, f32), _optional(hs, f32), _optional(ids, jnp.int32),
      reverse=np.int32(reverse))


def conv_forward(taps: Array, ids: Array, mask: Array | None, bias: Array,
                 pool_size: int) -> Array:
  """Conv1D(F, K, padding='same') -> relu -> MaxPooling1D(pool_size) of embedded ids (B, T):
  taps (V, K * F), each word's table row times each of the K kernel slices
  (`models.conv_taps`), mask (B, T) bool (padding counts as zeros), bias (F,), F a multiple
  of CONV_FEATURES_MULTIPLE -> (B, T // pool_size, F)."""
  _require()
  batch, steps = ids.shape
  out = jax.ShapeDtypeStruct((batch, steps // pool_size, bias.shape[0]), jnp.float32)
  return jax.ffi.ffi_call(CONV_FORWARD, out, vmap_method="sequential")(
      taps, ids, _optional(mask, bool), bias, pool=np.int32(pool_size))


def conv_backward(taps: Array, ids: Array, mask: Array | None, bias: Array, grad: Array,
                  pool_size: int) -> tuple[Array, Array]:
  """`conv_forward`'s gradient: from that of its output, grad (B, T // pool_size, F) ->
  the gradients of taps (V, K * F) and of bias (F,)."""
  _require()
  f32 = jnp.float32
  outputs = (jax.ShapeDtypeStruct(taps.shape, f32), jax.ShapeDtypeStruct(bias.shape, f32))
  return jax.ffi.ffi_call(CONV_BACKWARD, outputs, vmap_method="sequential")(
      taps, ids, _optional(mask, bool), bias, grad, pool=np.int32(pool_size))


def path_in_use() -> str:
  """'native' or 'scan': the path a float32 LSTM takes in this process, read from the program
  JAX compiles for it."""
  from seqjax import models  # models imports this module.
  run = lambda xw, rk: models.lstm_recurrence(xw, rk, None, None, False, False)  # Traced anew.
  hlo = jax.jit(run).lower(jnp.zeros((2, 1, 4), jnp.float32),
                           jnp.zeros((1, 4), jnp.float32)).as_text()
  return "native" if FORWARD in hlo else "scan"


if __name__ == "__main__":
  # `python -m seqjax.native_lstm`: builds the kernel if need be, says which path the LSTM
  # takes, and fails unless it is the native one (CI, on a machine with a C++ compiler).
  import sys
  used = path_in_use()
  print(f"LSTM recurrence path: {used}"
        + (f" ({unavailable_reason() or KERNEL_ENV + '=' + mode()})" if used == "scan" else ""))
  sys.exit(used != "native")
