"""orbax checkpoints of a run: the latest N epochs under checkpoints/, the best under checkpoints/best/.

Each checkpoint holds the TrainState (params, batch_stats, opt_state, step, rng) and a JSON record of the
loop (epoch reached, per-epoch history, early-stopping counters). orbax writes into a temporary directory and
renames it when complete, so a killed run never leaves a checkpoint that a resume would pick up half-written.
Data order is a function of (seed, epoch), so the epoch in the record is the whole data position.
"""
import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp


def _manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "record"))


class Checkpoints:
  """The latest-N and best-1 checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int):
    root = os.path.join(workdir, "checkpoints")
    self.latest = _manager(os.path.join(root, "latest"), keep)
    self.best = _manager(os.path.join(root, "best"), 1)

  def save(self, state, record: Dict, *, is_best: bool) -> None:
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state)), record=ocp.args.JsonSave(record))
    self.latest.save(step, args=args, force=True)
    if is_best:
      self.best.save(step, args=args, force=True)
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def restore_latest(self, state) -> Optional[Tuple[Any, Dict]]:
    return _restore(self.latest, state)

  def restore_best(self, state) -> Optional[Tuple[Any, Dict]]:
    return _restore(self.best, state)

  def close(self):
    self.latest.close()
    self.best.close()


def _state_tree(state) -> Dict:
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "rng": state.rng}


def _restore(manager: ocp.CheckpointManager, state) -> Optional[Tuple[Any, Dict]]:
  """(state, record) of the manager's newest checkpoint, shaped and sharded like `state`; None if none."""
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _state_tree(state))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           record=ocp.args.JsonRestore()))
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
