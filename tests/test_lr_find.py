"""LR range test: the exponential sweep, the stopping rule, the suggestion rule, its outputs, train.py's flag."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cnnjax.train import config as config_lib
from cnnjax.train import lr_find
from conftest import tiny_config

# The package exports the function under the module's name; the module itself is in sys.modules.
lr_find_lib = importlib.import_module("cnnjax.train.lr_find")

REPO = Path(__file__).resolve().parents[1]




def test_sweep_is_exponential_and_writes_only_its_outputs(image_folder, tmp_path):
  workdir = tmp_path / "run"
  result = lr_find(tiny_config(image_folder), str(workdir), steps=30, min_lr=1e-5, max_lr=1.0)
  lrs = np.asarray(result["lrs"])
  assert 2 <= len(lrs) <= 30
  # Step t of the sweep uses min * (max / min) ** (t / (steps - 1)): min at the first, max at the last step.
  np.testing.assert_allclose(lrs, 1e-5 * (1.0 / 1e-5) ** (np.arange(len(lrs)) / 29), rtol=1e-5)
  if len(lrs) == 30:
    assert result["stopped"] == "completed" and lrs[-1] == pytest.approx(1.0, rel=1e-5)
  else:
    assert result["stopped"].startswith(("diverged", "loss became"))
  assert 1e-5 <= result["suggestion"] <= 1.0 and result["suggestion"] in result["lrs"]
  assert len(result["losses"]) == len(lrs) and all(np.isfinite(result["losses"]))

  saved = json.loads((workdir / "lr_find.json").read_text())
  assert saved["suggestion"] == result["suggestion"] and saved["lrs"] == result["lrs"]
  assert (workdir / "lr_find.png").stat().st_size > 1000
  # Not a training run: no checkpoints, no config.json (a later train.py run there starts fresh), no lock.
  assert sorted(os.listdir(workdir)) == ["lr_find.json", "lr_find.png"]


def test_sweep_stops_when_the_loss_diverges(image_folder, tmp_path):
  config = tiny_config(image_folder, optimizer="sgd", momentum=0.0)
  result = lr_find(config, str(tmp_path), steps=40, min_lr=1e-3, max_lr=1e7)
  assert len(result["lrs"]) < 40, "plain SGD at lr 1e6 must blow the loss up before the sweep ends"
  assert result["stopped"].startswith(("diverged", "loss became")), result["stopped"]
  smoothed = np.asarray(result["smoothed_losses"])
  if result["stopped"].startswith("diverged"):
    assert smoothed[-1] > lr_find_lib.DIVERGENCE_FACTOR * smoothed[:-1].min()
    assert np.all(smoothed[:-1] <= lr_find_lib.DIVERGENCE_FACTOR * np.minimum.accumulate(smoothed[:-1]))


def test_smoothed_losses_are_the_bias_corrected_moving_average(image_folder, tmp_path):
  result = lr_find(tiny_config(image_folder), str(tmp_path), steps=12, min_lr=1e-6, max_lr=1e-3)
  beta, average = lr_find_lib.SMOOTHING, 0.0
  for index, (loss, smoothed) in enumerate(zip(result["losses"], result["smoothed_losses"])):
    average = beta * average + (1 - beta) * loss
    assert smoothed == pytest.approx(average / (1 - beta ** (index + 1)), rel=1e-9)
  assert result["smoothed_losses"][0] == pytest.approx(result["losses"][0])  # unbiased from the first step


def test_suggestion_is_the_steepest_descent_before_the_minimum():
  lrs = np.logspace(-7, 1, 81)  # 10 points per decade
  log_lrs = np.log10(lrs)
  # Falls fastest at lr 1e-3, bottoms out at 1e-1, then rises steeply (that rise must be ignored).
  losses = 2.0 - np.tanh(2 * (log_lrs + 3)) + 3.0 * np.maximum(log_lrs + 1, 0) ** 2
  assert lr_find_lib.suggest(lrs, losses) == pytest.approx(1e-3, rel=1e-6)
  # Too few points to differentiate: the lr of minimum loss / 10.
  assert lr_find_lib.suggest([1e-4, 1e-3], [2.0, 1.0]) == pytest.approx(1e-4)


def test_config_fields_validation_and_resume():
  config = config_lib.default_config()
  assert config.lr_find is False and config.lr_find_steps == 200
  assert (config.lr_find_min, config.lr_find_max) == (1e-7, 10.0)
  config.lr_find_min = 20.0
  with pytest.raises(ValueError, match="lr_find_min < config.lr_find_max"):
    config_lib.validate(config)
  # A run saved before these fields existed (or with other LR-finder settings) still resumes.
  saved = config_lib.default_config().to_dict()
  for key in ("lr_find", "lr_find_steps", "lr_find_min", "lr_find_max"):
    del saved[key]
  current = config_lib.default_config()
  current.lr_find_steps = 50
  config_lib.check_resumable(saved, current.to_dict())


def test_bad_arguments_say_what_to_fix(image_folder, tmp_path):
  with pytest.raises(ValueError, match="0 < min_lr < max_lr"):
    lr_find(tiny_config(image_folder), str(tmp_path), min_lr=1.0, max_lr=0.1)
  with pytest.raises(ValueError, match="at least 2 steps"):
    lr_find(tiny_config(image_folder), str(tmp_path), steps=1)


def test_train_py_flag_runs_the_finder_instead_of_training(image_folder, tmp_path):
  in_process = lr_find(tiny_config(image_folder), str(tmp_path / "api"), steps=30, min_lr=1e-5, max_lr=1.0)
  workdir = tmp_path / "run"
  # The same sweep, so the child reuses the programs this process compiled (conftest's cache directory).
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  completed = subprocess.run(
      [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
       f"--config.dataset=folder:{image_folder}", "--config.num_classes=3", "--config.image_size=16",
       "--config.batch_size=8", "--config.lr_find=True", "--config.lr_find_steps=30",
       "--config.lr_find_min=1e-5", "--config.lr_find_max=1.0"],
      cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert completed.returncode == 0, completed.stderr[-2000:]
  assert f"suggested learning rate {in_process['suggestion']:.3g}" in completed.stdout
  assert f"--config.schedule=onecycle --config.learning_rate={in_process['suggestion']:.3g}" in completed.stdout
  assert sorted(os.listdir(workdir)) == ["lr_find.json", "lr_find.png"]
  from_cli = json.loads((workdir / "lr_find.json").read_text())
  np.testing.assert_allclose(from_cli["losses"], in_process["losses"], rtol=1e-5)
