"""A run's orbax checkpoints: the train state and the running metrics of the current epoch.

Saving the epoch's running metrics too makes a resumed run report exactly what an
uninterrupted one would. Orbax writes each checkpoint to a temporary folder and renames it
when complete, so a crash mid-save leaves the previous checkpoints as they were. It writes in a
background thread: `save` returns once the arrays are copied off the devices, and training goes
on while they are written; the next save, a restore and `close` wait for that write first.
"""

import errno
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from seqjax import workdir as workdir_lib
from seqjax.errors import DataError, UserError


class CheckpointError(UserError):
  """A checkpoint could not be written or does not fit the config."""


def param_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'lstm/kernel': (32, 400), ...} for a tree of arrays or of array metadata."""
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


class Checkpoints:
  """The checkpoints in `directory`, the last `keep` of them kept."""

  def __init__(self, directory: str, keep: int, create: bool = True,
               asynchronous: bool = True):
    self.directory = directory
    self._manager = ocp.CheckpointManager(
        directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                             enable_async_checkpointing=asynchronous))
    self._writing: int | None = None  # The step being written in the background, if any.

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def last_complete_step(self) -> int | None:
    """The newest step whose checkpoint is written whole, read from the disk.

    Safe to call from another thread while a save is under way: orbax gives a checkpoint its
    step's name only once it is complete.
    """
    try:
      steps = [int(name) for name in os.listdir(self.directory) if name.isdigit()]
    except OSError:
      steps = []
    return max(steps, default=None)

  def save(self, step: int, state: Any, epoch_metrics: Any) -> None:
    """Starts writing the checkpoint of `step`, once the previous one is written whole.

    Raises CheckpointError, leaving the checkpoints before, if either cannot be written.
    """
    self.wait()
    item = {"state": state, "epoch_metrics": epoch_metrics}
    # Checked first because TensorStore, failing mid-write, floods stderr from its threads.
    needed = sum(x.nbytes for x in jax.tree_util.tree_leaves(item)) + 2**20
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      self._refuse(step, f"No space left on device: {free / 2**20:.1f} MB free, the checkpoint "
                         f"needs about {needed / 2**20:.1f} MB")
    try:
      self._manager.save(step, args=ocp.args.StandardSave(item), force=True)
    except Exception as e:  # A full disk is an OSError here, a ValueError from TensorStore.
      self._refuse_error(step, e)
    self._writing = step

  def wait(self) -> None:
    """Waits until the checkpoint being written in the background is complete."""
    step, self._writing = self._writing, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      self._refuse_error(step, e)

  def _refuse_error(self, step: int | None, error: Exception):
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
      self._refuse(step, "No space left on device", error)
    self._refuse(step, (str(error).splitlines() or [type(error).__name__])[0][:300], error)

  def _refuse(self, step: int | None, reason: str, cause: Exception | None = None):
    raise CheckpointError(
        f"Could not write the checkpoint of step {step} to {self.directory} ({reason}). "
        f"The previous checkpoint (step {self.last_complete_step()}) is intact: free some "
        "space and rerun the same command to resume from it.") from cause

  def restore(self, step: int, state: Any, epoch_metrics: Any) -> tuple[Any, Any]:
    """(state, epoch_metrics) of `step`, shaped like the given ones."""
    self.wait()
    metadata = dict(self._manager.item_metadata(step))
    if set(metadata) != {"state", "epoch_metrics"} or "params" not in metadata["state"]:
      raise CheckpointError(
          f"The checkpoint {self.directory}/{step} was not written by this version of seqjax: "
          f"it holds {', '.join(sorted(metadata)) or 'nothing'}, not a train state and the "
          "epoch's metrics. Train into a new --workdir, or move its checkpoints aside.")
    stored = param_shapes(metadata["state"]["params"])
    expected = param_shapes(state.params)
    if stored != expected:
      differences = "; ".join(f"{k}: stored {stored.get(k)}, config {expected.get(k)}"
                              for k in sorted(set(stored) | set(expected))
                              if stored.get(k) != expected.get(k))
      raise CheckpointError(f"The checkpoint {self.directory}/{step} does not match the config "
                            f"({differences}).")
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(
        {"state": state, "epoch_metrics": epoch_metrics}))
    return restored["state"], restored["epoch_metrics"]

  def restore_eval_params(self, step: int) -> Any:
    """The parameters of `step` that evaluation uses (their moving average, if the run kept
    one), as stored: no config needed to shape them."""
    self.wait()
    state = self._manager.restore(step, args=ocp.args.StandardRestore())["state"]
    return state["params"] if state.get("ema_params") is None else state["ema_params"]

  def restore_latest(self, state: Any, epoch_metrics: Any) -> tuple[Any, Any] | None:
    """The newest readable checkpoint, or None if there is none.

    An unreadable checkpoint (a damaged file) is moved aside to `<directory>-unreadable/` with
    a warning naming it, and the one before it is tried.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return self.restore(step, state, epoch_metrics)
      except CheckpointError:
        raise
      except Exception as e:  # Orbax and TensorStore report damage in many exception types.
        path = os.path.join(self.directory, str(step))
        aside = os.path.join(f"{self.directory}-unreadable", f"{step}-{time.time():.0f}")
        logging.warning("The checkpoint %s is unreadable (%s: %s); moved it to %s and falling "
                        "back to the previous one.", path, type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "", aside)
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(path, aside)
        self._manager.reload()
    return None

  def close(self) -> None:
    """Waits for a save under way, then releases orbax's threads."""
    try:
      self.wait()
    finally:
      self._manager.close()


def open_final(workdir: str) -> tuple[Checkpoints, int, str]:
  """A finished run's checkpoints to read, the step to read and which it is: the best on
  validation where the run had a validation split, else the last. Close them after reading.

  Raises DataError if there is none yet.
  """
  which = "best on validation"
  path = os.path.join(workdir, workdir_lib.BEST_CHECKPOINT)
  if not os.path.isdir(path):
    which, path = "the last", os.path.join(workdir, workdir_lib.CHECKPOINTS)
  if os.path.isdir(path):
    checkpoints = Checkpoints(path, keep=1, create=False, asynchronous=False)
    step = checkpoints.latest_step()
    if step is not None:
      return checkpoints, step, which
    checkpoints.close()
  raise DataError(f"{path} holds no checkpoint: the run has not finished an epoch. Train it "
                  "(rerun the same `seqjax.main` command) first.")
