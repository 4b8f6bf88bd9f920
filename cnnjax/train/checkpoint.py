"""orbax checkpoints of a run: the latest N epochs under checkpoints/, the best under checkpoints/best/.

Each checkpoint holds the TrainState (params, batch_stats, opt_state, step, rng) and a JSON record of the
loop (epoch reached, per-epoch history, early-stopping counters). orbax writes into a temporary directory and
renames it when complete, so a killed run never leaves a checkpoint that a resume would pick up half-written.
Data order is a function of (seed, epoch), so the epoch in the record is the whole data position.
"""
import contextlib
import logging
import os
import sys
import warnings
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from cnnjax.train import workdir as workdir_lib


def _manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "record"))


class Checkpoints:
  """The latest-N and best-1 checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int):
    root = os.path.join(workdir, "checkpoints")
    with workdir_lib.writing("the checkpoint directories", root):
      self.latest = _manager(os.path.join(root, "latest"), keep)
      self.best = _manager(os.path.join(root, "best"), 1)

  def save(self, state, record: Dict, *, is_best: bool) -> None:
    """Saves the latest (and best) checkpoint of `state.step`, or raises a one-line workdir.WriteError.

    A failed save (disk full, read-only workdir) leaves only orbax's temporary directory, which a resume
    ignores: the checkpoints saved before stay complete and restorable.
    """
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state)), record=ocp.args.JsonSave(record))
    # Best first: a run killed between the two saves resumes from the older latest checkpoint, redoes this
    # epoch and finds its best checkpoint already written, and identical (data order and RNG are part of the
    # state). Latest first, the resumed run would skip the epoch and never save it as the best.
    for manager, save in ((self.best, is_best), (self.latest, True)):
      if not save or step in manager.all_steps():
        continue
      with _quiet_orbax_threads():
        try:
          with workdir_lib.writing(f"the checkpoint of step {step}", str(manager.directory)):
            manager.save(step, args=args, force=True)
            manager.wait_until_finished()
        except workdir_lib.WriteError:
          with contextlib.suppress(Exception):
            manager.close()  # lets orbax's writer threads wind down while their tracebacks are dropped
          raise

  def restore_latest(self, state) -> Optional[Tuple[Any, Dict]]:
    return _restore(self.latest, state)

  def restore_best(self, state) -> Optional[Tuple[Any, Dict]]:
    return _restore(self.best, state)

  def restore_final(self, state, best: bool = True) -> Optional[Tuple[Any, Dict]]:
    """The run's model: the best checkpoint (else the latest), or the latest where `best` is False."""
    return (best and self.restore_best(state)) or self.restore_latest(state)

  def close(self):
    self.latest.close()
    self.best.close()


class _DropOrbaxErrors(logging.Filter):
  """Error records of orbax's writer threads and of its abandoned asyncio tasks."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    return not ("orbax" in record.pathname or "orbax" in record.getMessage())


def _is_closed_loop_callback(unraisable) -> bool:
  return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


@contextlib.contextmanager
def _quiet_orbax_threads():
  """Keeps a failed save to the one line the caller raises. When a write fails, orbax gives up on the save
  while its other writes are still in flight: each writer thread logs a traceback, abandoned asyncio tasks
  log theirs, and tensorstore reports "Event loop is closed" (as unraisable) for writes that complete after
  orbax's event loop closed. Much of it comes after the save raised, so after a failure the filters stay
  (the run is over; CNNJAX_DEBUG=1 shows everything)."""
  if os.environ.get("CNNJAX_DEBUG"):
    yield
    return
  loggers, dropper = [logging.getLogger("absl"), logging.getLogger("asyncio")], _DropOrbaxErrors()
  for logger in loggers:
    logger.addFilter(dropper)
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    if not _is_closed_loop_callback(unraisable):
      previous_hook(unraisable)
  sys.unraisablehook = hook
  try:
    yield
  except BaseException:
    warnings.filterwarnings("ignore", message="coroutine '.*serialize.*' was never awaited", category=RuntimeWarning)
    raise
  for logger in loggers:
    logger.removeFilter(dropper)
  if sys.unraisablehook is hook:
    sys.unraisablehook = previous_hook


def _state_tree(state) -> Dict:
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "rng": state.rng}


def _restore(manager: ocp.CheckpointManager, state) -> Optional[Tuple[Any, Dict]]:
  """(state, record) of the manager's newest checkpoint, shaped and sharded like `state`; None if none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _state_tree(state))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             record=ocp.args.JsonRestore()))
  except Exception as error:  # orbax and tensorstore raise many types, some over many lines
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    raise ValueError(f"cannot restore the checkpoint of step {step} in {manager.directory} ({reason}); it is damaged, "
                     f"or it was written by another model or config than the workdir's config.json: restore the "
                     f"workdir from a copy, or move {manager.directory}/{step} away to use an earlier "
                     "checkpoint") from error
  tree = restored["state"]
  return state.replace(**tree), restored["record"]


def read_record(manager_dir: str) -> Optional[Dict]:
  """The JSON record of the newest checkpoint in a manager directory, without restoring arrays."""
  if not os.path.isdir(manager_dir):
    return None
  manager = _manager(manager_dir, 1)
  try:
    step = manager.latest_step()
    if step is None:
      return None
    return manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
  finally:
    manager.close()
