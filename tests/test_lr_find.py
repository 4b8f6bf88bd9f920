"""LR range test, the Sobel convolution demo, and the TensorBoard events of a run."""
import json

import numpy as np
import pytest
from scipy import signal

from cnnjax import viz
from cnnjax.train import config as config_lib
from cnnjax.train import loop
from cnnjax.train.lr_find import lr_find, suggest


def tiny_config(image_folder, **overrides):
  config = config_lib.default_config()
  config.update(dataset=f"folder:{image_folder}", num_classes=3, image_size=16, batch_size=8, eval_batch_size=8,
                num_epochs=1, **overrides)
  return config


def test_lr_find_sweeps_exponentially_and_writes_its_plot_only(image_folder, tmp_path):
  result = lr_find(tiny_config(image_folder), str(tmp_path), steps=30, min_lr=1e-5, max_lr=10.0)
  lrs = np.asarray(result["lrs"])
  assert lrs[0] == pytest.approx(1e-5, rel=1e-5)
  ratios = lrs[1:] / lrs[:-1]
  np.testing.assert_allclose(ratios, (10.0 / 1e-5) ** (1 / 29), rtol=1e-4)  # exponential, min -> max in 30
  assert len(lrs) == 30 or "diverged" in result["stopped"] or "loss became" in result["stopped"]
  assert lrs[0] <= result["suggestion"] <= lrs[-1]
  saved = json.loads((tmp_path / "lr_find.json").read_text())
  assert saved["suggestion"] == result["suggestion"] and (tmp_path / "lr_find.png").stat().st_size > 1000
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()


def test_suggestion_is_the_steepest_descent_before_the_minimum():
  lrs = np.logspace(-6, 1, 50)
  # A loss that falls fastest around 1e-3 (a tanh step in log10(lr)), bottoms out, then blows up.
  log_lr = np.log10(lrs)
  losses = 2.0 - np.tanh(2 * (log_lr + 3)) + np.where(log_lr > -0.5, 20 * (log_lr + 0.5) ** 2, 0)
  assert suggest(lrs, losses) == pytest.approx(1e-3, rel=0.4)


def test_lr_find_rejects_a_bad_range(image_folder, tmp_path):
  with pytest.raises(ValueError, match="0 < min_lr < max_lr"):
    lr_find(tiny_config(image_folder), str(tmp_path), steps=5, min_lr=1.0, max_lr=0.1)


def test_sobel_is_the_2d_cross_correlation_with_the_sobel_kernels():
  rng = np.random.default_rng(0)
  gray = rng.random((9, 11)).astype(np.float32)
  dx, dy, magnitude = viz.sobel(gray)
  np.testing.assert_allclose(dx, signal.correlate2d(gray, viz.SOBEL_X, mode="same"), atol=1e-5)
  np.testing.assert_allclose(dy, signal.correlate2d(gray, viz.SOBEL_Y, mode="same"), atol=1e-5)
  np.testing.assert_allclose(magnitude, np.hypot(dx, dy), atol=1e-5)
  # A vertical edge (dark left, bright right) answers in dx only, away from the zero-padded border.
  edge = np.zeros((8, 8), np.float32)
  edge[:, 4:] = 1.0
  dx, dy, _ = viz.sobel(edge)
  assert np.all(dx[1:-1, 3:5] == 4.0) and np.all(dy[1:-1, 1:-1] == 0.0)


def test_convolution_demo_draws_sobel_and_a_models_first_layer(image_folder, tmp_path):
  workdir = tmp_path / "run"
  loop.train_and_evaluate(tiny_config(image_folder), str(workdir))
  model, variables, config = loop.restore(str(workdir))
  photo = image_folder / "red" / "0.png"
  out = tmp_path / "demo.png"
  viz.convolution_demo(photo, model=model, variables=variables, image_size=16,
                       preprocess=loop.preprocess_settings(config), path=out)
  assert out.stat().st_size > 5000

  # TensorBoard: the run's event files hold the per-epoch scalars that metrics.jsonl holds.
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0, "scalars": 0})
  events.Reload()
  history = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
  for tag in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "learning_rate"):
    assert tag in tags, f"{tag} missing from TensorBoard events ({sorted(tags)})"
    values = [float(np.asarray(__import__("tensorflow").make_ndarray(event.tensor_proto)))
              for event in events.Tensors(tag)] if tag in events.Tags()["tensors"] else \
             [event.value for event in events.Scalars(tag)]
    assert values[-1] == pytest.approx(history[tag], rel=1e-5)
