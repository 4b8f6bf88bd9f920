"""cnnjax.viz: the figures hold the data they claim to, and save as PNGs."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from cnnjax import viz

# As metrics.jsonl records them: epochs count from 0 (train.py prints the first as "epoch 1/N").
HISTORY = [
    {"epoch": 0, "train_loss": 2.0, "val_loss": 2.2, "train_accuracy": 0.3, "val_accuracy": 0.25},
    {"epoch": 1, "train_loss": 1.5, "val_loss": 1.9, "train_accuracy": 0.5, "val_accuracy": 0.4},
    {"epoch": 2, "train_loss": 1.1, "train_accuracy": 0.6},  # no validation this epoch
]


def _is_png(path):
  with Image.open(path) as image:
    return image.format == "PNG" and min(image.size) > 50


@pytest.mark.parametrize("metric", ["loss", "accuracy"])
def test_training_curves_plot_train_and_validation_per_epoch(tmp_path, metric):
  path = tmp_path / "curves" / f"{metric}.png"
  figure = viz.training_curves(HISTORY, metric, path)
  lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
  assert set(lines) == {"train", "validation"}
  np.testing.assert_array_equal(lines["train"].get_xdata(), [1, 2, 3])
  np.testing.assert_array_equal(lines["train"].get_ydata(), [h[f"train_{metric}"] for h in HISTORY])
  np.testing.assert_array_equal(lines["validation"].get_xdata(), [1, 2])
  assert _is_png(path)
  assert not plt.get_fignums()  # closed: a long run does not pile up figures


def _visible_ticks(axes):
  low, high = axes.get_xlim()
  return [tick for tick in axes.get_xticks() if low <= tick <= high]


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 30])
def test_training_curves_count_whole_epochs_from_1_as_printed(epochs):
  history = [{"epoch": epoch, "train_loss": 1 / (epoch + 1)} for epoch in range(epochs)]
  axes = viz.training_curves(history, "loss").axes[0]
  assert axes.get_lines()[0].get_xdata()[0] == 1  # metrics.jsonl's epoch 0 is the printed "epoch 1/N"
  ticks = _visible_ticks(axes)
  assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
  assert 1 in ticks or epochs > 10  # long runs tick every 5 or 10 epochs


def test_training_curves_reject_bad_input():
  with pytest.raises(ValueError, match="loss"):
    viz.training_curves(HISTORY, "f1")
  with pytest.raises(ValueError, match="train_loss"):
    viz.training_curves([{"epoch": 1, "lr": 0.1}], "loss")
  with pytest.raises(ValueError, match="empty"):
    viz.training_curves([], "loss")


def test_confusion_matrix_figure_shows_counts_and_accuracy(tmp_path):
  matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 4]])
  path = tmp_path / "confusion.png"
  figure = viz.confusion_matrix_figure(matrix, ["cat", "dog", "frog"], path)
  axes = figure.axes[0]
  texts = [t.get_text() for t in axes.texts]
  assert texts == [str(v) for v in matrix.ravel()]
  assert f"{16 / 20:.3f}" in axes.get_title()
  assert [t.get_text() for t in axes.get_xticklabels()] == ["cat", "dog", "frog"]
  np.testing.assert_allclose(axes.images[0].get_array(), matrix / matrix.sum(axis=1, keepdims=True))
  assert _is_png(path)
  with pytest.raises(ValueError, match="2 class names"):
    viz.confusion_matrix_figure(matrix, ["cat", "dog"])


def test_overlay_blends_colour_map_over_image():
  rng = np.random.default_rng(0)
  image, heatmap = rng.random((6, 6, 3)), rng.random((6, 6))
  scaled = (image - image.min()) / (image.max() - image.min())
  np.testing.assert_allclose(viz.overlay_array(image, heatmap, alpha=0.0), scaled, atol=1e-6)
  colours = plt.get_cmap("jet")((heatmap - heatmap.min()) / (heatmap.max() - heatmap.min()))[..., :3]
  np.testing.assert_allclose(viz.overlay_array(image, heatmap, alpha=1.0), colours, atol=1e-6)
  half = viz.overlay_array(image[..., :1], heatmap, alpha=0.5)  # grayscale image
  assert half.shape == (6, 6, 3)
  with pytest.raises(ValueError, match="sizes differ"):
    viz.overlay_array(image, heatmap[:3])
  assert len(viz.overlay(image, np.zeros((6, 6))).axes[0].images) == 1  # a flat map does not divide by 0


def test_activation_and_filter_grids_have_one_tile_per_channel(tmp_path):
  activations = np.random.default_rng(0).random((5, 5, 10))
  figure = viz.activation_grid(activations, cols=4, path=tmp_path / "acts.png")
  tiles = [axis for axis in figure.axes if axis.images]
  assert len(tiles) == 10 and len(figure.axes) == 12  # 3 rows x 4 columns
  np.testing.assert_array_equal(tiles[7].images[0].get_array(), activations[..., 7])
  kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 6))
  figure = viz.filter_grid(kernel, path=tmp_path / "filters.png")
  tiles = [axis for axis in figure.axes if axis.images]
  assert len(tiles) == 6 and tiles[0].images[0].get_array().shape == (3, 3, 3)
  assert _is_png(tmp_path / "acts.png") and _is_png(tmp_path / "filters.png")
  with pytest.raises(ValueError, match="HWIO|in, out"):
    viz.filter_grid(kernel[0])


def test_explanation_figure_orders_panels_like_keras_vis(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.random((8, 8, 3))
  maps = {"gradcam": rng.random((8, 8)), "guided_gradcam": rng.normal(size=(8, 8, 3)),
          "saliency": rng.normal(size=(8, 8, 3)), "relu": rng.normal(size=(8, 8, 3)),
          "guided": rng.normal(size=(8, 8, 3))}
  figure = viz.explanation_figure(image, maps, "predicted: cat (0.91) | target: dog", tmp_path / "x.png")
  titles = [axis.get_title() for axis in figure.axes]
  assert titles == ["input", "saliency", "guided backprop", "rectified backprop", "Grad-CAM", "guided Grad-CAM"]
  assert figure._suptitle.get_text() == "predicted: cat (0.91) | target: dog"
  # Gradient panels: max |g| over channels divided by its 99th percentile, the top 1% saturated, in gray.
  saliency_panel = np.asarray(figure.axes[1].images[0].get_array())
  expected = np.abs(maps["saliency"]).max(axis=-1)
  expected = np.clip(expected / np.percentile(expected, 99), 0, 1)
  np.testing.assert_allclose(saliency_panel, np.repeat(expected[..., None], 3, axis=-1), atol=1 / 255)
  assert np.sum(saliency_panel[..., 0] == 1.0) == 1  # only the largest of 64 pixels is saturated
  assert _is_png(tmp_path / "x.png")
  with pytest.raises(ValueError, match="empty"):
    viz.explanation_figure(image, {})
