"""Explainers and explain.py given bad input: every public explainer, every kind of bad batch, and workdirs that
are missing, damaged or hold another model's checkpoint: one line each, saying what is wrong and what to do.

tests/test_explain.py checks saliency/Grad-CAM with an unknown or flat layer, targets out of range or of the wrong
count, a single image and uint8 images; tests/test_explain_cli.py bad --methods/--target/--layer and a missing
image. These are the rest, across all explainers.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
import faults
from cnnjax import explain, models
from cnnjax.apps import report
from cnnjax.train import loop

REPO = Path(__file__).resolve().parents[2]
SIZE = 16


def init(model):
  return jax.jit(lambda key, x: model.init(key, x, train=False))(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)))


@pytest.fixture(scope="module")
def model_and_variables():
  model = models.create("simple_cnn", num_classes=3)
  return model, init(model)


@pytest.fixture(scope="module")
def other_variables():
  """Variables of another architecture (with BatchNorm) for the same input."""
  return init(models.create("simple_cnn_bn", num_classes=3))


def images(batch=2, size=SIZE, channels=3, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(0).uniform(0, 1, (batch, size, size, channels)), dtype)


# Every public explainer as f(model, variables, images, targets): the others get the rest of their arguments.
EXPLAINERS = {
    "saliency": lambda m, v, x, t: explain.saliency(m, v, x, t),
    "guided": lambda m, v, x, t: explain.saliency(m, v, x, t, modifier="guided"),
    "gradcam": lambda m, v, x, t: explain.gradcam(m, v, x, t),
    "gradcam++": lambda m, v, x, t: explain.gradcam_plus_plus(m, v, x, t),
    "guided_gradcam": lambda m, v, x, t: explain.guided_gradcam(m, v, x, t),
    "smoothgrad": lambda m, v, x, t: explain.smoothgrad(m, v, x, t, samples=2),
    "integrated_gradients": lambda m, v, x, t: explain.integrated_gradients(m, v, x, t, steps=2),
    "input_x_gradient": lambda m, v, x, t: explain.input_x_gradient(m, v, x, t),
    "gradient_shap": lambda m, v, x, t: explain.gradient_shap(m, v, x, t, samples=2),
    "noise_tunnel": lambda m, v, x, t: explain.noise_tunnel(explain.saliency, m, v, x, t, samples=2),
    "scorecam": lambda m, v, x, t: explain.scorecam(m, v, x, t),
    "ablationcam": lambda m, v, x, t: explain.ablationcam(m, v, x, t),
    "layercam": lambda m, v, x, t: explain.layercam(m, v, x, t),
    "xgradcam": lambda m, v, x, t: explain.xgradcam(m, v, x, t),
    "eigencam": lambda m, v, x, t: explain.eigencam(m, v, x, t),
    "hirescam": lambda m, v, x, t: explain.hirescam(m, v, x, t),
    "occlusion": lambda m, v, x, t: explain.occlusion(m, v, x, t, window=4, strides=4),
    "rise": lambda m, v, x, t: explain.rise(m, v, x, t, masks=4),
    # The feature mask fits whatever images are given, so that the images' own error is the one raised.
    "feature_ablation": lambda m, v, x, t: explain.feature_ablation(
        m, v, x, t, feature_mask=explain.grid_mask(*x.shape[-3:-1], 8)),
    "kernel_shap": lambda m, v, x, t: explain.kernel_shap(m, v, x, t, feature_mask=explain.grid_mask(
        *x.shape[-3:-1], 8), samples=4),
    "deletion": lambda m, v, x, t: explain.deletion_insertion(m, v, x, t, jnp.ones(x.shape[:3]), steps=2),
    "randomization": lambda m, v, x, t: explain.randomization_check(m, v, x, t, method="saliency"),
    "activations": lambda m, v, x, t: explain.activations(m, v, x, ["conv2d_1"]),
}
BAD_INPUTS = {
    # name: (images, targets, the message's fragments); variables=None means the model's own
    "images of another size": (lambda: images(size=24), [0, 1], None,
                               ["on images of shape (24, 24, 3)", "give images of the size and channels"]),
    "images of another channel count": (lambda: images(channels=1), [0, 1], None,
                                        ["on images of shape (16, 16, 1)", "(3, 3, 3, 6)"]),
    "another model's variables": (lambda: images(), [0, 1], "other",
                                  ["the variables do not fit SimpleCNN", "this model's own variables"]),
    "an empty batch": (lambda: images(batch=0), [], None, ["empty batch"]),
    "a rank-5 batch": (lambda: images()[None], [0, 1], None, ["(B, H, W, C) batch; got shape (1, 2, 16, 16, 3)"]),
    "a single image": (lambda: images()[0], [0], None, ["add a batch axis with images[None]"]),
    "integer pixels": (lambda: images(dtype=jnp.int32), [0, 1], None, ["must be floating point"]),
    "a target out of range": (lambda: images(), [0, 3], None, ["target 3 is out of range; valid targets are 0..2"]),
    "a negative target": (lambda: images(), [-1, 0], None, ["target -1 is out of range"]),
    "float targets": (lambda: images(), [0.0, 1.0], None, ["targets must be integer class indices"]),
    "too few targets": (lambda: images(), [0, 1, 2], None, ["one class per image"]),
}
# activations has no targets.
TARGET_CASES = ("a target out of range", "a negative target", "float targets", "too few targets")


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_every_explainer_rejects_bad_input_in_one_line(model_and_variables, other_variables, method, bad):
  if method == "activations" and bad in TARGET_CASES:
    pytest.skip("activations takes no targets")
  model, variables = model_and_variables
  make_images, targets, other, fragments = BAD_INPUTS[bad]
  if other:
    variables = other_variables
  with pytest.raises(ValueError) as error:
    EXPLAINERS[method](model, variables, make_images(), targets)
  message = str(error.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


@pytest.mark.parametrize("layer, fragment", [
    (3, "layer must be a layer name"),
    ("block5_conv3", "unknown layer 'block5_conv3'; valid layers: conv2d"),
    ("dense", "not a (B, H, W, C) feature map; choose one of"),
])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "guided_gradcam", "randomization", "maximize"])
def test_layer_arguments(model_and_variables, method, layer, fragment):
  model, variables = model_and_variables
  call = {
      "gradcam": lambda: explain.gradcam(model, variables, images(), [0, 1], layer=layer),
      "gradcam++": lambda: explain.gradcam_plus_plus(model, variables, images(), [0, 1], layer=layer),
      "guided_gradcam": lambda: explain.guided_gradcam(model, variables, images(), [0, 1], layer=layer),
      "randomization": lambda: explain.randomization_check(model, variables, images(), [0, 1], layer=layer),
      "maximize": lambda: explain.maximize_activation(model, variables, layer=layer, filters=[0],
                                                      input_shape=(SIZE, SIZE, 3), preprocess="rescale", steps=1),
  }[method]
  if method == "maximize" and fragment.startswith("not a"):
    pytest.skip("a flat layer's units are valid maximisation targets")
  with pytest.raises(ValueError) as error:
    call()
  assert fragment in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_maximize_on_another_input_size_is_one_line(model_and_variables):
  model, variables = model_and_variables
  with pytest.raises(ValueError) as error:
    explain.maximize_activation(model, variables, [0], input_shape=(24, 24, 3), preprocess="rescale", steps=1)
  assert "the variables do not fit SimpleCNN" in str(error.value) and "\n" not in str(error.value)


# --- workdirs: missing, damaged, or holding another model's checkpoint -----------------------------------------

@pytest.fixture(scope="module")
def trained_run(image_folder, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("explain") / "run"
  loop.train_and_evaluate(conftest.tiny_config(image_folder, num_epochs=1), str(workdir))
  return workdir


def edit_config(workdir, **changes):
  path = Path(workdir) / "config.json"
  config = json.loads(path.read_text())
  for key, value in changes.items():
    if value is None:
      del config[key]
    else:
      config[key] = value
  path.write_text(json.dumps(config))


def damage(kind, workdir: Path):
  """Turns a copy of a good run into a bad one."""
  if kind == "corrupt config.json":
    (workdir / "config.json").write_text('{"model": "simple_cnn", ')
  elif kind == "config.json that is not a config":
    (workdir / "config.json").write_text("[1, 2, 3]")
  elif kind == "config.json without a model":
    edit_config(workdir, model=None)
  elif kind == "config.json naming an unknown model":
    edit_config(workdir, model="vgg99")
  elif kind == "another model's checkpoint":
    edit_config(workdir, model="simple_cnn_bn")
  elif kind == "a checkpoint with another class count":
    edit_config(workdir, num_classes=5, class_names=["a", "b", "c", "d", "e"])
  elif kind == "truncated checkpoint files":
    for path in (workdir / "checkpoints").rglob("*"):
      if path.is_file() and path.parent.name == "d" and path.stat().st_size > 1000:
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  elif kind == "random files for checkpoints":
    shutil.rmtree(workdir / "checkpoints")
    for name in ("latest/7/state/_METADATA", "latest/7/blob", "best/notes.txt"):
      (workdir / "checkpoints" / name).parent.mkdir(parents=True, exist_ok=True)
      (workdir / "checkpoints" / name).write_bytes(os.urandom(64))
  elif kind == "only a torn checkpoint":
    for which in ("latest", "best"):
      for step in (workdir / "checkpoints" / which).iterdir():
        step.rename(step.with_name(step.name + ".orbax-checkpoint-tmp-1"))
  elif kind == "no checkpoints":
    shutil.rmtree(workdir / "checkpoints")


WORKDIR_CASES = {
    "corrupt config.json": "config.json is not a usable train.py config (Expecting",
    "config.json that is not a config": "config.json is not a usable train.py config",
    "config.json without a model": "config.json is not a usable train.py config",
    "config.json naming an unknown model": "is not a usable train.py config (unknown model 'vgg99'",
    "another model's checkpoint": "cannot restore the checkpoint of step",
    "a checkpoint with another class count": "cannot restore the checkpoint of step",
    "truncated checkpoint files": "cannot restore the checkpoint of step",
    "random files for checkpoints": "cannot restore the checkpoint of step 7",
    "only a torn checkpoint": "has no checkpoint yet; train first",
    "no checkpoints": "has no checkpoint yet; train first",
}


@pytest.mark.parametrize("kind", list(WORKDIR_CASES))
def test_damaged_or_foreign_workdirs_are_one_line(trained_run, tmp_path, kind):
  workdir = tmp_path / "copy"
  shutil.copytree(trained_run, workdir)
  damage(kind, workdir)
  before = sorted(str(p) for p in workdir.rglob("*"))
  with pytest.raises(ValueError) as error:
    report.load_workdir(str(workdir))
  message = str(error.value)
  assert WORKDIR_CASES[kind] in message and "\n" not in message, message
  if "checkpoint of step" in message:
    assert "restore the workdir from a copy" in message
  assert sorted(str(p) for p in workdir.rglob("*")) == before, "reading a run must not change it"


def test_explain_py_on_a_foreign_checkpoint_prints_one_line(trained_run, image_folder, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(trained_run, workdir)
  damage("another model's checkpoint", workdir)
  done = subprocess.run([sys.executable, "explain.py", "--workdir", str(workdir), "--images",
                         str(image_folder / "red" / "0.png")], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env={**os.environ, **faults.compilation_cache_env()})
  assert done.returncode == 1
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: cannot restore the checkpoint of step"), done.stderr
