"""A live progress line on the terminal: examples done, examples/s, the ETA and the step.

It is drawn only where stderr is a terminal (never into logs or pipes), and it clears itself
before each log line, so the logs read as without it.
"""

import contextlib
import logging
import sys
from collections.abc import Iterator

import tqdm
from absl import logging as absl_logging

BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} "
              "[{rate_fmt}, ETA {remaining}{postfix}]")


class _ClearBar(logging.Filter):
  """Clears the bar before a log record is written; the bar's next update redraws it."""

  def __init__(self, bar: tqdm.tqdm):
    super().__init__()
    self.bar = bar

  def filter(self, record: logging.LogRecord) -> bool:
    self.bar.clear()
    return True


@contextlib.contextmanager
def bar(total: int | None, description: str, initial: int = 0, unit: str = "ex",
        shown: bool = True) -> Iterator[tqdm.tqdm]:
  """A tqdm bar on stderr counting `unit`s up to `total` (None: unknown); disabled unless
  `shown` and stderr is a terminal (pass shown=False on all processes but one)."""
  with tqdm.tqdm(total=total, desc=description, initial=initial, unit=unit, leave=False,
                 dynamic_ncols=True, file=sys.stderr, bar_format=BAR_FORMAT if total else None,
                 disable=not (shown and sys.stderr.isatty())) as progress:
    if progress.disable:
      yield progress
      return
    clear = _ClearBar(progress)
    handler = absl_logging.get_absl_handler()
    handler.addFilter(clear)
    try:
      yield progress
    finally:
      handler.removeFilter(clear)
