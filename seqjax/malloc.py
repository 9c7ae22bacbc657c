"""glibc malloc settings for the CPU backend.

XLA:CPU allocates its (T, B, 4H) sequence buffers afresh at every step. glibc hands such
large blocks back to the OS when they are freed and faults fresh pages in at the next step;
on the 2-core VMs we measured, those page faults cost as much as the LSTM's arithmetic
(docs/performance.md). Two remedies, both only where JAX computes on the CPU:

- `keep_freed_memory`, in the running process (`mallopt`): large blocks come from the heap,
  which is never trimmed. `train.train_and_evaluate` and `seqjax.load` call it.
- `restart_with_huge_pages`, for the commands: glibc backs the heap with transparent huge pages
  only when told at start-up (GLIBC_TUNABLES), which measured faster still, so
  `python -m seqjax.main` and `python -m seqjax.predict` restart themselves once with it.

Set GLIBC_TUNABLES (even to an empty string) to keep glibc's own behaviour, or your own.
"""

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import os
import platform
import sys

# <malloc.h>'s mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# Freed memory above the heap's top is returned to the OS only beyond this; mallopt takes an
# int, so 2 GiB is its largest.
TRIM_THRESHOLD = 2**31 - 1
# What the commands restart with: the same, the heap (almost) never trimmed, huge pages, and
# one arena. XLA's worker threads otherwise malloc from arenas of their own, whose heaps cannot
# hold a block over 64 MiB, so glibc mmaps those (the step's temporaries) despite mmap_max=0.
HUGE_PAGE_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0"
                      ":glibc.malloc.trim_threshold=1099511627776:glibc.malloc.arena_max=1")


def _glibc() -> bool:
  return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


# Set once this process has restarted with HUGE_PAGE_TUNABLES (and removed them from its
# environment): glibc read them at start-up.
_restarted = False


@functools.cache
def keep_freed_memory(backend: str) -> bool:
  """Makes glibc keep freed memory in the process, on the CPU backend; True if it did.

  Large blocks then come from the heap rather than from mmap, and the heap is not trimmed.
  Nothing is done on other backends, on other C libraries, where GLIBC_TUNABLES is set, or
  after the commands' restart (which set the same and more).
  """
  if backend != "cpu" or not _glibc() or "GLIBC_TUNABLES" in os.environ or _restarted:
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                  TRIM_THRESHOLD))


def _cpu_only() -> bool:
  """Whether JAX will compute on the CPU, judged without importing it: JAX_PLATFORMS says
  so, or no accelerator plugin (CUDA, ROCm, TPU) is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return all(p.strip() == "cpu" for p in platforms.split(","))
  if importlib.metadata.entry_points(group="jax_plugins"):
    return False
  if importlib.util.find_spec("libtpu") is not None:
    return False
  spec = importlib.util.find_spec("jax_plugins")
  return spec is None or not any(
      os.listdir(path) for path in (spec.submodule_search_locations or []))


def restart_with_huge_pages() -> None:
  """Re-executes this command with HUGE_PAGE_TUNABLES, once, on the CPU backend.

  After the restart the variable is removed from os.environ, so that programs this one
  starts get glibc's defaults. Nothing is done where GLIBC_TUNABLES is set (even to an
  empty string).
  """
  global _restarted
  if not _glibc():
    return
  if os.environ.get("GLIBC_TUNABLES") == HUGE_PAGE_TUNABLES:  # This is the restarted process.
    del os.environ["GLIBC_TUNABLES"]  # glibc has read it; the programs this one starts need not.
    _restarted = True
    return
  if "GLIBC_TUNABLES" in os.environ or not _cpu_only():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
            {**os.environ, "GLIBC_TUNABLES": HUGE_PAGE_TUNABLES})
