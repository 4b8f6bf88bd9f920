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
