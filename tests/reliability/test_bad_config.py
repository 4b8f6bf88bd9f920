"""Bad configs fail in one line before anything is compiled, and before the workdir gets a checkpoint.

tests/test_train.py covers a zero batch size, a batch size not divisible by the devices, a negative learning
rate, an unknown model / optimizer / top-level field, validation_split=1 and a string num_epochs; these are the
rest: every numeric field's range, non-finite numbers, the nested groups, preprocessing, a model too deep for
its input, and what train.py prints for each.
"""
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import pytest

import conftest
import faults
from cnnjax.train import loop

REPO = Path(__file__).resolve().parents[2]
# Lowering and backend compilation; tracing alone (jax.eval_shape, which checks the model's input) is free.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def compilations():
  events = []

  def listener(name, *args, **kwargs):
    if name in COMPILE_EVENTS:
      events.append(name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


AUGMENT = {"horizontal_flip": True, "rotation": 0.0, "width_shift": 0.1, "height_shift": 0.1, "shear": 0.0,
           "zoom": 0.0}

BAD = [
    # unknown keys inside the nested groups
    ({"early_stopping": {"monitor": "val_loss", "patience": 1, "min_delta": 0.1}},
     "unknown config.early_stopping field(s) ['min_delta']"),
    ({"bottleneck": {"layer": "", "hidden": (8,), "dropout": (0.5,), "units": 3}},
     "unknown config.bottleneck field(s) ['units']"),
    ({"augment": {**AUGMENT, "zom": 0.1}}, "unknown augment setting(s) ['zom']"),
    ({"model_options": {"dropuot": 0.5}}, "simple_cnn has no option(s) dropuot"),
    # wrong types
    ({"learning_rate": "0.1"}, "config.learning_rate should be a float, got '0.1'"),
    ({"batch_size": 8.0}, "config.batch_size should be a int, got 8.0"),
    ({"seed": True}, "config.seed should be a int, got True"),
    ({"dataset": 5}, "config.dataset should be a str, got 5"),
    ({"augment": {**AUGMENT, "zoom": "big"}}, "config.augment.zoom should be a number or a (low, high) pair"),
    ({"augment": {**AUGMENT, "horizontal_flip": "yes"}}, "config.augment.horizontal_flip should be a bool"),
    ({"early_stopping": {"monitor": "val_loss", "patience": "3"}}, "config.early_stopping.patience should be a int"),
    ({"bottleneck": {"layer": "", "hidden": 512, "dropout": (0.5,)}}, "config.bottleneck.hidden should be a tuple"),
    # zero, negative, non-finite, out of range
    ({"num_epochs": 0}, "config.num_epochs must be positive, got 0"),
    ({"num_epochs": -1}, "config.num_epochs must be positive, got -1"),
    ({"batch_size": -8}, "config.batch_size must be positive, got -8"),
    ({"eval_batch_size": 0}, "config.eval_batch_size must be positive"),
    ({"learning_rate": 0.0}, "config.learning_rate must be positive, got 0.0"),
    ({"learning_rate": float("nan")}, "config.learning_rate must be a finite number, got nan"),
    ({"learning_rate": float("inf")}, "config.learning_rate must be a finite number, got inf"),
    ({"steps_per_epoch": 0}, "config.steps_per_epoch must be positive or None"),
    ({"keep_checkpoints": 0}, "config.keep_checkpoints must be positive"),
    ({"checkpoint_every_steps": -1}, "config.checkpoint_every_steps must be >= 0"),
    ({"momentum": -0.5}, "config.momentum must be >= 0"),
    ({"weight_decay": -1e-4}, "config.weight_decay must be >= 0"),
    ({"grad_clip_norm": -1.0}, "config.grad_clip_norm must be >= 0"),
    ({"label_smoothing": 1.5}, r"config.label_smoothing must be in [0, 1)"),
    ({"warmup_epochs": -1.0}, "config.warmup_epochs must be >= 0"),
    ({"decay": -0.1}, "config.decay must be >= 0 or None"),
    ({"seed": -1}, "config.seed must be >= 0"),
    ({"limit_per_class": 0}, "config.limit_per_class must be positive or None"),
    ({"validation_split": -0.1}, r"config.validation_split must be in [0, 1)"),
    ({"early_stopping": {"monitor": "val_loss", "patience": -1}}, "config.early_stopping.patience must be >= 0"),
    ({"schedule": "piecewise", "lr_drops": ((1, -0.1),)}, "config.lr_drops must be ((epoch, lr), ...) pairs"),
    ({"augment": {**AUGMENT, "rotation": -10.0}}, r"config.augment.rotation must be in [0, 360)"),
    ({"augment": {**AUGMENT, "zoom": 1.5}}, r"config.augment.zoom must be in [0, 1)"),
    ({"augment": {**AUGMENT, "width_shift": 1.0}}, r"config.augment.width_shift must be in [0, 1)"),
    ({"image_size": 0}, "config.image_size must be positive"),
    ({"channels": 4}, "config.channels must be 1 (grayscale) or 3 (RGB), got 4"),
    ({"num_classes": 1}, "config.num_classes must be at least 2"),
    # the evaluation batch is sharded over the 4 devices too
    ({"eval_batch_size": 6}, "config.eval_batch_size=6 is not divisible by the 4 devices; use a multiple of 4"),
    # preprocessing
    ({"preprocess": "imagenet"}, "unknown config.preprocess 'imagenet'; use auto or one of rescale"),
    ({"preprocess": "mean_std"}, "config.preprocess='mean_std' needs config.mean"),
    ({"preprocess": "mean_std", "mean": (0.5, 0.5), "std": (0.2, 0.2)}, "config.mean needs 1 or 3 finite numbers"),
    ({"preprocess": "mean_std", "mean": (0.5,), "std": (0.0,)}, "config.std must be positive"),
    ({"preprocess": "caffe", "channels": 1}, "config.preprocess='caffe' needs RGB images"),
    # a model deeper than its input allows
    ({"model": "alexnet"}, "input 16x16 is too small for alexnet"),
    ({"model": "vgg16"}, "input 16x16 is too small for vgg16"),
    ({"model": "lenet5", "image_size": 8}, "input 8x8 is too small for lenet5"),
    ({"model": "mobilenet", "image_size": 8}, "input 8x8 is too small for mobilenet"),
    # data problems are found before compiling too
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"dataset": "folder:/no/such/folder"}, "does not exist"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[m.split(";")[0][:60] for _, m in BAD])
def test_bad_config_is_one_line_before_any_compilation(image_folder, tmp_path, overrides, message):
  # From a plain dict, as a config file may build it, so ConfigDict's own type locking does not step in.
  fields = {**conftest.tiny_config(image_folder).to_dict(), **overrides}
  config = ml_collections.ConfigDict(fields)
  with compilations() as compiled, pytest.raises(ValueError) as error:
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
  assert compiled == [], "the error came after compiling"
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("flag, message", [
    ("--config.lerning_rate=0.1", "error: --config.lerning_rate: the config has no field 'lerning_rate'; "
                                  "Did you mean \"learning_rate\""),
    ("--config.augment.zoom=1.5", "error: config.augment.zoom must be in [0, 1)"),
    ("--config=configs/no_such_config.py", "error: no config file at configs/no_such_config.py"),
])
def test_train_py_prints_exactly_one_line(image_folder, tmp_path, flag, message):
  workdir = tmp_path / "run"
  command = [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
             f"--config.dataset=folder:{image_folder}", "--config.num_classes=3", "--config.image_size=16",
             "--config.batch_size=8", "--config.eval_batch_size=8", flag]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, **faults.compilation_cache_env()})
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(message), done.stderr
  assert not (workdir / "checkpoints").exists()
