"""A full disk or a read-only workdir while a run saves, and NaN weights: one clear line, nothing lost.

Each fault hits a run that already has a checkpoint. Expected: a one-line error naming what could not be
written, where, and what to do; the checkpoints saved before stay complete and restorable; the half-written
one is never picked up: the rerun, once the fault is gone, ends exactly as an uninterrupted run.
"""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import conftest
import faults
from cnnjax.train import checkpoint as checkpoint_lib
from cnnjax.train import loop
from cnnjax.train import weights
from cnnjax.train import workdir as workdir_lib

REPO = Path(__file__).resolve().parents[2]


def config_of(image_folder, **overrides):
  return conftest.tiny_config(image_folder, **{"num_epochs": 2, "validation_split": 0.25, **overrides})


@pytest.fixture(scope="module")
def reference(image_folder, tmp_path_factory):
  """The uninterrupted run every faulty run must end up equal to."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  loop.train_and_evaluate(config_of(image_folder), str(workdir))
  return workdir


def metrics(workdir):
  return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
          for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(workdir, reference):
  _, expected, _ = weights.restore(str(reference))
  _, actual, _ = weights.restore(str(workdir))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(b), np.asarray(a)), expected, actual)
  assert metrics(workdir) == metrics(reference)
  assert json.loads((Path(workdir) / "eval.json").read_text())["epoch"] == \
      json.loads((Path(reference) / "eval.json").read_text())["epoch"]


def complete_steps(workdir, which="latest"):
  """The steps orbax would restore from, and the half-written leftovers beside them."""
  entries = sorted(os.listdir(Path(workdir) / "checkpoints" / which))
  return [int(e) for e in entries if e.isdigit()], [e for e in entries if not e.isdigit()]


def assert_one_line(error, *fragments):
  message = str(error)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, message


def test_disk_full_while_saving_is_one_line_and_the_rerun_ends_as_if_nothing_happened(image_folder, reference,
                                                                                      tmp_path):
  # train.py itself, so what the user sees is checked: epoch 1 fine, then the disk fills up (no file may grow
  # past 32 KB) and the end-of-epoch-2 checkpoint cannot be written.
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config_of(image_folder, num_epochs=1), str(workdir))
  (saved_step,), _ = complete_steps(workdir)
  command = [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
             f"--config.dataset=folder:{image_folder}", "--config.num_classes=3", "--config.image_size=16",
             "--config.batch_size=8", "--config.eval_batch_size=8", "--config.num_epochs=2",
             "--config.validation_split=0.25"]
  done = subprocess.run(faults.with_file_size_limit(command), cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, **faults.compilation_cache_env()})
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: could not write the checkpoint of step ")
  assert f"{workdir}/checkpoints/" in last and "the disk is full" in last and "free some space" in last, last
  assert "rerun the same command" in last

  (steps, torn), (best_steps, best_torn) = complete_steps(workdir), complete_steps(workdir, "best")
  assert steps == best_steps == [saved_step], "only the epoch-1 checkpoint is complete"
  assert torn or best_torn, "the torn one is left beside it, and ignored"
  weights.restore(str(workdir))  # the previous checkpoint is intact
  loop.train_and_evaluate(config_of(image_folder), str(workdir))
  assert_same_run(workdir, reference)


def test_disk_full_at_a_mid_epoch_checkpoint(image_folder, reference, tmp_path, monkeypatch):
  # Saves at steps 2, 4 (epoch end), 6, 8 (end); the third is mid-epoch 2. checkpoint_every_steps changes no
  # numbers, so the reference run is the same run.
  config = config_of(image_folder, checkpoint_every_steps=2)
  workdir = tmp_path / "run"
  faults.fault_on_save(monkeypatch, 3, faults.disk_full)
  with pytest.raises(workdir_lib.WriteError) as error:
    loop.train_and_evaluate(config, str(workdir))
  assert_one_line(error.value, "could not write the checkpoint of step 6 to", "the disk is full")
  assert error.value.errno == errno.EFBIG
  assert complete_steps(workdir)[0] == [2, 4]
  monkeypatch.undo()
  loop.train_and_evaluate(config, str(workdir))
  assert_same_run(workdir, reference)


@pytest.mark.parametrize("code, says", [(errno.EROFS, "the file system is read-only; remount it read-write"),
                                        (errno.ENOSPC, "the disk is full"),
                                        (errno.EACCES, "permission denied; make the workdir writable")])
def test_read_only_or_full_workdir_at_the_second_checkpoint(image_folder, reference, tmp_path, monkeypatch,
                                                            code, says):
  workdir = tmp_path / "run"
  faults.fault_on_save(monkeypatch, 2, lambda: faults.failing_writes(monkeypatch, workdir, code))
  with pytest.raises(workdir_lib.WriteError) as error:
    loop.train_and_evaluate(config_of(image_folder), str(workdir))
  assert_one_line(error.value, f"to {workdir}/checkpoints/", says, "rerun the same command")
  assert error.value.errno == code
  assert complete_steps(workdir)[0] == complete_steps(workdir, "best")[0] == [4]
  if code == errno.EROFS:  # the cause changes only the message: one rerun shows the recovery for all three
    monkeypatch.undo()
    loop.train_and_evaluate(config_of(image_folder), str(workdir))
    assert_same_run(workdir, reference)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions; the EACCES case above injects them")
def test_workdir_made_read_only_by_chmod(image_folder, tmp_path):
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config_of(image_folder, num_epochs=1), str(workdir))
  writable = [workdir, *[p for p in workdir.rglob("*") if p.is_dir()]]
  for path in writable:
    path.chmod(0o555)
  try:
    with pytest.raises(workdir_lib.WriteError) as error:
      loop.train_and_evaluate(config_of(image_folder), str(workdir))
    assert_one_line(error.value, "could not write", "permission denied")
    weights.restore(str(workdir))  # reading a read-only run still works
  finally:
    for path in writable:
      path.chmod(0o755)


def test_a_read_only_workdir_is_refused_at_once_and_can_still_be_restored(image_folder, reference, tmp_path,
                                                                          monkeypatch):
  with faults.failing_writes(monkeypatch, reference):
    with pytest.raises(workdir_lib.WriteError) as error:
      loop.train_and_evaluate(config_of(image_folder), str(reference))
    assert_one_line(error.value, f"could not write the run's lock file to {reference}/.lock: the file system is "
                    "read-only")
    # explain.py and research scripts read results from read-only mounts.
    model, variables, config = weights.restore(str(reference))
    assert config.num_classes == 3 and "params" in variables


def test_metrics_write_failure_after_a_saved_checkpoint_is_repaired_by_the_rerun(image_folder, reference, tmp_path,
                                                                                 monkeypatch):
  # The last epoch's checkpoint is saved, then metrics.jsonl cannot be written: the rerun has no epoch left to
  # train, and must still leave complete metrics and outputs.
  workdir = tmp_path / "run"
  real_write_history = workdir_lib.write_history
  calls = {"count": 0}

  def write_history(directory, history):
    calls["count"] += 1
    if calls["count"] == 2:
      with faults.failing_writes(monkeypatch, workdir, errno.ENOSPC):
        return real_write_history(directory, history)
    return real_write_history(directory, history)
  monkeypatch.setattr(workdir_lib, "write_history", write_history)
  with pytest.raises(workdir_lib.WriteError) as error:
    loop.train_and_evaluate(config_of(image_folder), str(workdir))
  assert_one_line(error.value, f"could not write metrics.jsonl to {workdir}/metrics.jsonl: the disk is full")
  assert not [p for p in workdir.iterdir() if ".tmp-" in p.name], "no temporary file left behind"
  monkeypatch.undo()
  loop.train_and_evaluate(config_of(image_folder), str(workdir))
  assert_same_run(workdir, reference)


# --- NaN / inf weights are never the best checkpoint --------------------------------------------------------

@pytest.mark.parametrize("nonfinite, validation_split", [("stop", 0.25), ("skip", 0.25), ("skip", 0.0)])
def test_weights_that_blew_up_are_never_saved_as_best(image_folder, tmp_path, nonfinite, validation_split):
  # Epoch 1 trains normally; in epoch 2 the learning rate is 1e30, so the weights overflow.
  config = config_of(image_folder, validation_split=validation_split, optimizer="sgd",
                     momentum=0.0, learning_rate=0.01, schedule="piecewise", lr_drops=((0, 1e30),),
                     nonfinite=nonfinite)
  workdir = tmp_path / "run"
  if nonfinite == "stop":
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at step \d+"):
      loop.train_and_evaluate(config, str(workdir))
  else:
    results = loop.train_and_evaluate(config, str(workdir))
    assert results["epoch"] == 0, "the evaluated weights are the last finite best"
  record = checkpoint_lib.read_record(str(workdir / "checkpoints" / "best"))
  assert record["history"][-1]["epoch"] == 0
  _, variables, _ = weights.restore(str(workdir))
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(variables))


# --- killed between the two saves of an epoch's end ----------------------------------------------------------

def test_killed_between_the_best_and_the_latest_save_resumes_exactly(image_folder, reference, tmp_path,
                                                                     monkeypatch):
  # Epoch 2 (step 8) is the best epoch: it goes to both managers. The run dies right after the first of the
  # two writes, whichever it is; the rerun must still end with epoch 2 as the best.
  import orbax.checkpoint as ocp
  real_save = ocp.CheckpointManager.save
  saved = []

  def save(self, step, *args, **kwargs):
    result = real_save(self, step, *args, **kwargs)
    self.wait_until_finished()
    saved.append(step)
    if saved.count(8) == 1:
      raise KeyboardInterrupt("killed between the two saves")
    return result
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  workdir = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(config_of(image_folder), str(workdir))
  monkeypatch.undo()
  loop.train_and_evaluate(config_of(image_folder), str(workdir))
  assert_same_run(workdir, reference)
