"""What a run writes into its workdir; every file is written whole (temporary file + rename)."""
import contextlib
import errno
import fcntl
import json
import os
import re
from typing import Dict, List, Optional, Sequence

import ml_collections

from cnnjax.train import config as config_lib


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _errno_of(error: BaseException) -> Optional[int]:
  """The OS error code behind `error`: an OSError's errno, or the `os_error_code` tensorstore (orbax's array
  writer) puts in the text of the ValueError it raises."""
  if isinstance(error, OSError) and error.errno:
    return error.errno
  match = re.search(r"os_error_code\W*(\d+)", str(error))
  return int(match.group(1)) if match else None


def is_write_failure(error: BaseException) -> bool:
  return isinstance(error, OSError) or _errno_of(error) is not None


class WriteError(OSError):
  """A write into the workdir failed (disk full, read-only, permissions); the message is one actionable line."""

  def __str__(self):
    return self.strerror


def write_failure(error: BaseException, what: str, path: str) -> WriteError:
  """One line for a failed write: what could not be written where, why, and what to do."""
  code = _errno_of(error)
  if code in _NO_SPACE:
    why, fix = "the disk is full (or a quota or file-size limit was reached)", "free some space"
  elif code == errno.EROFS:
    why, fix = "the file system is read-only", "remount it read-write (or copy the workdir to a writable disk)"
  elif code in _NOT_WRITABLE:
    why, fix = "permission denied", "make the workdir writable for this user (chmod/chown)"
  else:
    why, fix = " ".join(str(error).split())[:300] or type(error).__name__, "fix the cause"
  return WriteError(code or errno.EIO, f"could not write {what} to {path}: {why}; {fix}, then rerun the same "
                    "command: a run resumes from its last complete checkpoint")


@contextlib.contextmanager
def writing(what: str, path: str):
  """Turns an OSError (or tensorstore's write error) inside the block into `write_failure`'s one line."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except
    if isinstance(error, WriteError) or not is_write_failure(error):
      raise
    raise write_failure(error, what, path) from error


def write_text(workdir: str, name: str, text: str) -> str:
  path = os.path.join(workdir, name)
  temporary = f"{path}.tmp-{os.getpid()}"
  with writing(name, path):
    try:
      with open(temporary, "w") as f:
        f.write(text)
      os.replace(temporary, path)
    except OSError:
      with contextlib.suppress(OSError):
        os.remove(temporary)  # a half-written temporary (disk full) would only take more space
      raise
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
  with writing("the run's lock file", os.path.join(workdir, ".lock")):
    os.makedirs(workdir, exist_ok=True)
    handle = open(os.path.join(workdir, ".lock"), "a+")  # pylint: disable=consider-using-with
  with handle:
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
  with writing("the workdir", workdir):
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
    with writing(f"the {metric} plot", os.path.join(workdir, f"{metric}.png")):
      viz.training_curves(history, metric, os.path.join(workdir, f"{metric}.png"))


def write_outputs(workdir: str, results: Dict, class_names: Sequence[str]) -> None:
  """eval.json and, for a classifier's report, confusion_matrix.png."""
  from cnnjax import viz
  write_text(workdir, "eval.json", json.dumps(results, indent=2))
  if "confusion_matrix" in results:
    with writing("the confusion matrix plot", os.path.join(workdir, "confusion_matrix.png")):
      viz.confusion_matrix_figure(results["confusion_matrix"], class_names,
                                  os.path.join(workdir, "confusion_matrix.png"))
