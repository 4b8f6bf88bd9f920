"""What a run writes into its workdir; every file is written whole (temporary file + rename)."""
import contextlib
import fcntl
import json
import os
from typing import Dict, List, Sequence

import ml_collections

from cnnjax.train import config as config_lib


def write_text(workdir: str, name: str, text: str) -> str:
  path = os.path.join(workdir, name)
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w") as f:
    f.write(text)
  os.replace(temporary, path)
  return path


@contextlib.contextmanager
def exclusive(workdir: str, enabled: bool = True):
  """Holds an exclusive lock on the workdir for the duration of a run; a second run fails at once.

  Only process 0 of a (multi-host) run takes it, so the processes of one jax.distributed run share it.
  The lock is the kernel's (flock), so it disappears with the process even after SIGKILL.
  """
  if not enabled:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, ".lock"), "a+") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      owner = handle.read().strip() or "another process"
      raise ValueError(f"{workdir} is in use by another train.py run ({owner}); wait for it to finish "
                       "or use another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Creates the workdir; refuses one that holds a different run (see config.check_resumable)."""
  os.makedirs(workdir, exist_ok=True)
  saved_path = os.path.join(workdir, "config.json")
  if os.path.exists(saved_path):
    with open(saved_path) as f:
      saved = json.load(f)
    config_lib.check_resumable(saved, config.to_dict())


def write_history(workdir: str, history: List[Dict]) -> None:
  """metrics.jsonl (one line per epoch) and the loss/accuracy curves, rewritten whole each epoch so a
  resumed run never duplicates an epoch."""
  from cnnjax import viz
  write_text(workdir, "metrics.jsonl", "".join(json.dumps(record) + "\n" for record in history))
  for metric in ("loss", "accuracy"):
    viz.training_curves(history, metric, os.path.join(workdir, f"{metric}.png"))


def write_outputs(workdir: str, history: List[Dict], results: Dict, class_names: Sequence[str]) -> None:
  from cnnjax import viz
  write_text(workdir, "eval.json", json.dumps(results, indent=2))
  if "confusion_matrix" in results:
    viz.confusion_matrix_figure(results["confusion_matrix"], class_names,
                                os.path.join(workdir, "confusion_matrix.png"))
