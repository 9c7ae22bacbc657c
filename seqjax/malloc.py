"""glibc malloc settings for the CPU backend, set in the running process.

XLA:CPU allocates its (T, B, 4H) sequence buffers afresh at every step. glibc hands such
large blocks back to the OS when they are freed and faults fresh pages in at the next step;
on the 2-core VMs we measured, those page faults cost as much as the LSTM's arithmetic
(docs/performance.md). Keeping freed memory in the process avoids them: `mallopt` sets this
for the allocations that follow, so no restart is needed.

Set GLIBC_TUNABLES (even to an empty string) to keep glibc's own behaviour, or your own.
"""

import ctypes
import ctypes.util
import functools
import os
import platform
import sys

# <malloc.h>'s mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# Freed memory above the heap's top is returned to the OS only beyond this; mallopt takes an
# int, so 2 GiB is its largest.
TRIM_THRESHOLD = 2**31 - 1
# The same settings as start-up tunables (which need a new process), for comparison in
# benchmarks/benchmark.py.
TUNABLES = {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"
                              f":glibc.malloc.trim_threshold={TRIM_THRESHOLD}"}


@functools.cache
def keep_freed_memory(backend: str) -> bool:
  """Makes glibc keep freed memory in the process, on the CPU backend; True if it did.

  Large blocks then come from the heap rather than from mmap, and the heap is not trimmed.
  Nothing is done on other backends, on other C libraries, or where GLIBC_TUNABLES is set.
  """
  if (backend != "cpu" or sys.platform != "linux" or "GLIBC_TUNABLES" in os.environ
      or platform.libc_ver()[0] != "glibc"):
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                  TRIM_THRESHOLD))
