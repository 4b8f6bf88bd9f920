"""Matplotlib figures: training curves, confusion matrices, heatmap overlays, activation and filter grids,
and the keras-vis style explanation strip (input | saliency | guided | rectified | Grad-CAM | guided Grad-CAM).

Every function returns its `Figure` (closed to pyplot, so long runs don't accumulate figures) and saves it as
a PNG when given `path`. The Agg backend is used, so no display is needed.
"""
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

PathLike = Union[str, Path]

CURVE_METRICS = ("loss", "accuracy")


def _finish(figure, path: Optional[PathLike]):
  if path is not None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(figure)
  return figure


def training_curves(history: Sequence[Mapping[str, float]], metric: str = "loss",
                    path: Optional[PathLike] = None):
  """`metric` ('loss' or 'accuracy') per epoch, train vs validation, from per-epoch dicts.

  Each dict may hold `epoch`, `train_<metric>` and `val_<metric>`; missing values (e.g. no validation on
  some epochs) are skipped, so a partial history still plots.
  """
  if metric not in CURVE_METRICS:
    raise ValueError(f"unknown metric {metric!r}; choose one of {CURVE_METRICS}")
  if not history:
    raise ValueError("history is empty; pass a list of per-epoch dicts such as {'epoch': 1, 'train_loss': 0.5}")
  figure, axes = plt.subplots(figsize=(6, 4))
  plotted = False
  for split in ("train", "val"):
    key = f"{split}_{metric}"
    points = [(entry.get("epoch", index + 1), entry[key]) for index, entry in enumerate(history)
              if entry.get(key) is not None]
    if points:
      epochs, values = zip(*points)
      axes.plot(epochs, values, marker="o", label="validation" if split == "val" else "train")
      plotted = True
  if not plotted:
    plt.close(figure)
    raise ValueError(f"history has no 'train_{metric}' or 'val_{metric}' values; keys seen: "
                     f"{sorted(set().union(*(entry.keys() for entry in history)))}")
  axes.set_xlabel("epoch")
  axes.set_ylabel(metric)
  axes.set_title(f"{metric} per epoch")
  axes.grid(alpha=0.3)
  axes.legend()
  return _finish(figure, path)


def confusion_matrix_figure(matrix, class_names: Sequence[str], path: Optional[PathLike] = None):
  """Counts matrix (rows: true class, columns: predicted class), shaded by row-normalised frequency."""
  matrix = np.asarray(matrix)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
    raise ValueError(f"confusion matrix must be square (classes, classes); got shape {matrix.shape}")
  if len(class_names) != matrix.shape[0]:
    raise ValueError(f"got {len(class_names)} class names for a {matrix.shape[0]}-class confusion matrix")
  row_totals = matrix.sum(axis=1, keepdims=True)
  normalised = matrix / np.maximum(row_totals, 1)
  size = max(4.0, 0.5 * len(class_names) + 2)
  figure, axes = plt.subplots(figsize=(size, size))
  image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
  figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class")
  ticks = np.arange(len(class_names))
  axes.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
  axes.set_yticks(ticks, labels=class_names)
  axes.set_xlabel("predicted")
  axes.set_ylabel("true")
  if len(class_names) <= 30:  # beyond that the numbers are unreadable
    for row, column in np.ndindex(matrix.shape):
      count = matrix[row, column]
      text = f"{count:d}" if np.issubdtype(matrix.dtype, np.integer) else f"{count:.2g}"
      axes.text(column, row, text, ha="center", va="center", fontsize=8,
                color="white" if normalised[row, column] > 0.5 else "black")
  accuracy = np.trace(matrix) / max(matrix.sum(), 1)
  axes.set_title(f"confusion matrix (accuracy {accuracy:.3f})")
  return _finish(figure, path)


def _to_display(image):
  """(H, W, C) or (H, W) array of any range -> float image in [0, 1] for imshow (one channel squeezed)."""
  image = np.asarray(image, np.float32)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
    raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3); got shape {image.shape}")
  low, high = float(np.min(image)), float(np.max(image))
  return (image - low) / (high - low) if high > low else np.zeros_like(image)


def _heatmap_rgb(heatmap, cmap: str):
  heatmap = np.asarray(heatmap, np.float32)
  if heatmap.ndim != 2:
    raise ValueError(f"heatmap must be (H, W); got shape {heatmap.shape}")
  return plt.get_cmap(cmap)(_to_display(heatmap))[..., :3]


def overlay_array(image, heatmap, alpha: float = 0.5, cmap: str = "jet"):
  """(H, W, 3) float array: the coloured heatmap blended over the image, as the Grad-CAM papers show."""
  if not 0 <= alpha <= 1:
    raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
  base = _to_display(image)
  if base.ndim == 2:
    base = np.repeat(base[..., None], 3, axis=-1)
  base = base[..., :3]
  colours = _heatmap_rgb(heatmap, cmap)
  if colours.shape[:2] != base.shape[:2]:
    raise ValueError(f"heatmap {colours.shape[:2]} and image {base.shape[:2]} sizes differ; upsample the "
                     "heatmap first (the explainers already return maps at the input size)")
  return (1 - alpha) * base + alpha * colours


def overlay(image, heatmap, alpha: float = 0.5, cmap: str = "jet", path: Optional[PathLike] = None,
            title: Optional[str] = None):
  """The heatmap (e.g. a Grad-CAM map) in `cmap` colours over the image."""
  figure, axes = plt.subplots(figsize=(4, 4))
  axes.imshow(overlay_array(image, heatmap, alpha, cmap))
  axes.axis("off")
  if title:
    axes.set_title(title)
  return _finish(figure, path)


def _grid(tiles, cols: int, titles=None, cmap="viridis", size: float = 1.2, suptitle=None):
  rows = math.ceil(len(tiles) / cols)
  figure, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
  for index, axis in enumerate(axes.flat):
    axis.axis("off")
    if index < len(tiles):
      axis.imshow(tiles[index], cmap=cmap, interpolation="nearest")
      if titles is not None:
        axis.set_title(titles[index], fontsize=7)
  if suptitle:
    figure.suptitle(suptitle)
  return figure


def activation_grid(activations, cols: int = 8, path: Optional[PathLike] = None, title: Optional[str] = None,
                    max_channels: int = 64):
  """One tile per channel of a layer's (H, W, C) output (the tutorials' 8x8 `display_outputs`)."""
  activations = np.asarray(activations)
  if activations.ndim == 4 and activations.shape[0] == 1:
    activations = activations[0]
  if activations.ndim != 3:
    raise ValueError(f"activations must be one image's (H, W, C) feature map; got shape {activations.shape}")
  if cols < 1:
    raise ValueError(f"cols must be positive; got {cols}")
  channels = min(activations.shape[-1], max_channels)
  tiles = [activations[..., c] for c in range(channels)]
  figure = _grid(tiles, min(cols, channels), [str(c) for c in range(channels)], suptitle=title)
  return _finish(figure, path)


def filter_grid(kernel, cols: int = 8, path: Optional[PathLike] = None, title: Optional[str] = None,
                max_filters: int = 64):
  """First-layer filters of an HWIO kernel: RGB tiles for 3 input channels, else the channel mean."""
  kernel = np.asarray(kernel, np.float32)
  if kernel.ndim != 4:
    raise ValueError(f"kernel must be (H, W, in, out) as in variables['params'][layer]['kernel']; got shape "
                     f"{kernel.shape}")
  count = min(kernel.shape[-1], max_filters)
  tiles = []
  for index in range(count):
    weights = kernel[..., index]
    tiles.append(_to_display(weights if weights.shape[-1] == 3 else weights.mean(axis=-1)))
  figure = _grid(tiles, min(cols, count), cmap="gray", suptitle=title)
  return _finish(figure, path)


EXPLANATION_PANELS = ("saliency", "guided", "relu", "gradcam", "guided_gradcam")
_PANEL_TITLES = {"saliency": "saliency", "guided": "guided backprop", "relu": "rectified backprop",
                 "gradcam": "Grad-CAM", "guided_gradcam": "guided Grad-CAM"}


def _panel(map_):
  """Explainer output -> displayable panel: gradients as max |g| over channels, CAM maps as they are."""
  map_ = np.asarray(map_, np.float32)
  if map_.ndim == 4 and map_.shape[0] == 1:
    map_ = map_[0]
  if map_.ndim == 3:
    return np.abs(map_).max(axis=-1)
  if map_.ndim == 2:
    return map_
  raise ValueError(f"a map must be (H, W) or (H, W, C) for one image; got shape {map_.shape}")


def explanation_figure(image, maps: Mapping[str, object], title: str = "",
                       path: Optional[PathLike] = None, alpha: float = 0.5):
  """input | one panel per map (keras-vis order: saliency, guided, rectified, Grad-CAM, guided Grad-CAM).

  `maps` holds one image's explanations keyed by method name; known names come first in the order above,
  others follow. Grad-CAM-like maps are overlaid on the image; gradient maps are shown as max |g|.
  `title` is e.g. 'predicted: cat (0.91) | target: dog'.
  """
  if not maps:
    raise ValueError(f"maps is empty; pass e.g. {{'saliency': ..., 'gradcam': ...}} ({EXPLANATION_PANELS})")
  order = [name for name in EXPLANATION_PANELS if name in maps]
  order += [name for name in maps if name not in order]
  figure, axes = plt.subplots(1, len(order) + 1, figsize=(2.6 * (len(order) + 1), 3), squeeze=False)
  axes = axes[0]
  axes[0].imshow(_to_display(image), cmap="gray")
  axes[0].set_title("input", fontsize=9)
  for axis, name in zip(axes[1:], order):
    panel = _panel(maps[name])
    if "cam" in name and "guided" not in name:
      axis.imshow(overlay_array(image, panel, alpha))
    else:
      axis.imshow(_to_display(panel), cmap="gray" if name != "guided_gradcam" else "inferno")
    axis.set_title(_PANEL_TITLES.get(name, name), fontsize=9)
  for axis in axes:
    axis.axis("off")
  if title:
    figure.suptitle(title)
  return _finish(figure, path)
