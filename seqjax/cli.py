"""What the command-line entry points share: a quiet console and user errors as one line.

Import it before anything that imports TensorFlow (clu, TFDS): TensorFlow only writes
TensorBoard files here, and its start-up chatter would bury the run's own output.
"""

import logging
import os
import platform
import sys
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import logging as absl_logging  # noqa: E402

from seqjax.errors import UserError  # noqa: E402


# glibc's malloc hands large freed blocks back to the OS and faults fresh pages in on the next
# allocation. XLA allocates its (T, B, 4H) sequence buffers anew at every step, and on the
# 2-core VMs we measured, faulting those pages in cost as much as the LSTM's arithmetic, so
# freed memory is kept in the process and backed by huge pages (README, Performance). glibc
# reads these settings only at start-up.
FAST_MALLOC = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0"
                                 ":glibc.malloc.trim_threshold=1099511627776"}


def restart_with_fast_malloc() -> None:
  """Re-executes this command with FAST_MALLOC, unless GLIBC_TUNABLES is already set.

  Set GLIBC_TUNABLES (even to an empty string) to keep your own settings.
  """
  if sys.platform != "linux" or "GLIBC_TUNABLES" in os.environ:
    return
  if platform.libc_ver()[0] != "glibc":
    return
  os.environ.update(FAST_MALLOC)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


class _SeqjaxInfoOnly(logging.Filter):
  """INFO lines from seqjax and clu; from other libraries (jax, TFDS) only warnings.

  Orbax logs its failures with tracebacks from its threads, then raises them to seqjax, which
  reports each in one line: its own logs would only bury that line.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if "/orbax/" in record.pathname:
      return record.levelno >= logging.CRITICAL
    return (record.levelno >= logging.WARNING
            or any(part in record.pathname for part in ("/seqjax/", "/clu/")))


def _ignore_closed_event_loop(unraisablehook):
  """Orbax reading a damaged checkpoint (which seqjax then skips) leaves TensorStore callbacks
  that fail on its closed event loop, each reported as an unraisable exception with a
  traceback; only those are dropped."""

  def hook(unraisable):
    if not (unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"):
      unraisablehook(unraisable)

  return hook


def run(function: Callable[..., Any], *args) -> Any:
  """Calls `function`; a UserError becomes one line on stderr and its exit code."""
  absl_logging.get_absl_handler().addFilter(_SeqjaxInfoOnly())
  sys.unraisablehook = _ignore_closed_event_loop(sys.unraisablehook)
  try:
    return function(*args)
  except UserError as e:
    print(f"{e.label}: {e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
