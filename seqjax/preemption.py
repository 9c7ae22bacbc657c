"""Stopping a run on SIGINT, SIGTERM or a preemption notice: at one step on every process.

One process: a signal is honoured after the current step. Several processes (a TPU pod slice,
where a maintenance event or a spot preemption sends SIGTERM to the hosts, not all at once):
each host hands SIGTERM to JAX's preemption service, which tells the others and picks one step
for all (`multihost_utils.reached_preemption_sync_point`); a SIGINT on any host is turned into
that same notice. Every process then saves that step's checkpoint and exits with 128 + the
signal number (143 for SIGTERM, 130 for SIGINT on the host that got it).

A second SIGINT exits at once, without saving, keeping the last complete checkpoint. It is
read by a thread of its own, so that it works even while the main thread waits on devices or
on the other hosts.
"""

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

import jax
from jax.experimental import multihost_utils

from seqjax.errors import UserError


class StopRequests:
  """A context in which SIGINT and SIGTERM ask the training loop to stop at an agreed step.

  `last_checkpoint()` names the last complete checkpoint, for the message of a forced exit.
  Outside the main thread (where no signal handler can be set) it never asks for a stop.
  """

  def __init__(self, last_checkpoint: Callable[[], str]):
    self._last_checkpoint = last_checkpoint
    self._received: list[int] = []
    self._previous_handlers: dict[int, object] = {}
    self._several_processes = False
    self._wakeup: tuple[socket.socket, socket.socket] | None = None
    self._previous_wakeup_fd = -1

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is not threading.main_thread():
      return self
    self._several_processes = jax.process_count() > 1
    handled = [signal.SIGINT, signal.SIGTERM]
    if self._several_processes:
      if not jax.config.jax_enable_preemption_service:
        raise UserError("JAX's preemption service is off, and a run on several processes needs "
                        "it to stop all of them at the same step: do not set "
                        "jax_enable_preemption_service=False.")
      handled.remove(signal.SIGTERM)  # JAX's preemption service has its own SIGTERM handler.
    self._previous_handlers = {s: signal.signal(s, self._request) for s in handled}
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    self._wakeup = reader, writer
    self._previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=self._watch, args=(reader,), daemon=True,
                     name="seqjax-second-sigint").start()
    return self

  def __exit__(self, *exc_info) -> None:
    for s, handler in self._previous_handlers.items():
      signal.signal(s, handler)
    if self._wakeup is not None:
      signal.set_wakeup_fd(self._previous_wakeup_fd)
      reader, writer = self._wakeup
      writer.close()  # The watcher's recv() then returns b"" and the thread ends.
      self._wakeup = None

  def _request(self, signum: int, frame) -> None:
    del frame
    self._received.append(signum)
    if self._several_processes and len(self._received) == 1:
      os.kill(os.getpid(), signal.SIGTERM)  # Tells the other hosts through JAX's service.

  def _watch(self, reader: socket.socket) -> None:
    interrupts = 0
    try:
      while data := reader.recv(16):
        interrupts += data.count(signal.SIGINT)
        if interrupts >= 2:
          self._exit_now()
    finally:
      reader.close()

  def _exit_now(self) -> None:
    """The second SIGINT: a message on a line of its own, then exit without cleaning up."""
    if sys.stderr.isatty():
      sys.stderr.write("\n")  # Past any progress line the terminal shows.
    sys.stderr.write(f"stopped: a second SIGINT: exited at once, without saving. "
                     f"{self._last_checkpoint()}\n")
    sys.stderr.flush()
    os._exit(128 + signal.SIGINT)

  def stop_signal(self, step: int) -> int | None:
    """After `step`: the signal to stop with (the same step on every process), else None.

    Call it after every training step, with increasing step numbers.
    """
    if not self._several_processes:
      return self._received[0] if self._received else None
    if multihost_utils.reached_preemption_sync_point(step):
      return self._received[0] if self._received else signal.SIGTERM
    return None
