"""Writing files so that readers see the old content or the new, never half of it."""

import contextlib
import os
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
  """Opens a temporary file beside `path`; it replaces `path` only if the block succeeds.

  The file's data reaches the disk before the rename, and the rename before returning, so a
  crash leaves the old file or the complete new one.
  """
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _fsync_directory(directory: str) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:  # Some systems cannot open a directory; the rename itself is still atomic.
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
