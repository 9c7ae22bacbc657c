"""Writing files so that readers see the old content or the new, never half of it."""

import contextlib
import os
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
  """Opens a temporary file beside `path`; it replaces `path` only if the block succeeds."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, mode, **kwargs) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
