"""What the command-line entry points share: a quiet console and user errors as one line.

Importing it changes nothing; the commands call its functions.
"""

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from absl import logging as absl_logging

from seqjax.errors import UserError


def quiet_tensorflow() -> None:
  """Keeps TensorFlow's start-up chatter (it only writes TensorBoard files here) from burying
  the command's own output. Call it before anything imports TensorFlow (clu, TFDS)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


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
