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
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
from cnnjax.explain import registry  # noqa: E402  (titles and kinds of the explainers' panels)

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
  """`metric` ('loss' or 'accuracy') per epoch, train vs validation, from per-epoch dicts (metrics.jsonl lines).

  Each dict may hold `epoch`, `train_<metric>` and `val_<metric>`; missing values (e.g. no validation on
  some epochs) are skipped, so a partial history still plots. `epoch` counts from 0, as metrics.jsonl records
  it; the axis counts from 1 in whole epochs, as the printed "epoch 1/N" lines do.
  """
  if metric not in CURVE_METRICS:
    raise ValueError(f"unknown metric {metric!r}; choose one of {CURVE_METRICS}")
  if not history:
    raise ValueError("history is empty; pass a list of per-epoch dicts such as {'epoch': 0, 'train_loss': 0.5}")
  figure, axes = plt.subplots(figsize=(6, 4))
  plotted = False
  for split in ("train", "val"):
    key = f"{split}_{metric}"
    points = [(entry.get("epoch", index) + 1, entry[key]) for index, entry in enumerate(history)
              if entry.get(key) is not None]
    if points:
      epochs, values = zip(*points)
      axes.plot(epochs, values, marker="o", label="validation" if split == "val" else "train")
      plotted = True
  if not plotted:
    plt.close(figure)
    raise ValueError(f"history has no 'train_{metric}' or 'val_{metric}' values; keys seen: "
                     f"{sorted(set().union(*(entry.keys() for entry in history)))}")
  # Whole epochs only, and a tick even when one epoch is plotted (the default wants two in view).
  axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1, steps=[1, 2, 5, 10]))
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
  figure = plt.figure(figsize=(cols * size, rows * size))
  _draw_tiles(figure, tiles, cols, titles, cmap)
  if suptitle:
    figure.suptitle(suptitle)
  return figure


def _draw_tiles(figure, tiles, cols: int, titles=None, cmap="viridis"):
  """Tiles in a rows x cols grid of axes on `figure` (a Figure or a SubFigure of a larger one)."""
  rows = math.ceil(len(tiles) / cols)
  axes = figure.subplots(rows, cols, squeeze=False)
  for index, axis in enumerate(axes.flat):
    axis.axis("off")
    if index < len(tiles):
      axis.imshow(tiles[index], cmap=cmap, interpolation="nearest")
      if titles is not None:
        axis.set_title(titles[index], fontsize=7)


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
  tiles = _filter_tiles(kernel, max_filters)
  figure = _grid(tiles, min(cols, len(tiles)), cmap="gray", suptitle=title)
  return _finish(figure, path)


def _filter_tiles(kernel, max_filters: int):
  tiles = []
  for index in range(min(kernel.shape[-1], max_filters)):
    weights = kernel[..., index]
    tiles.append(_to_display(weights if weights.shape[-1] == 3 else weights.mean(axis=-1)))
  return tiles


# Panels in the registry's order (keras-vis's first: saliency, guided, rectified, ..., Grad-CAM, guided Grad-CAM).
EXPLANATION_PANELS = tuple(registry.METHODS)
PANEL_TITLES = {name: method.title for name, method in registry.METHODS.items()}


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


def _is_overlay(name: str) -> bool:
  """Region maps (the CAMs, RISE) are shown over the image; per-pixel maps (gradients, occlusion) alone. A name the
  registry does not know is a region map if it looks like a CAM."""
  if name in registry.METHODS:
    return registry.METHODS[name].region
  return "cam" in name and "guided" not in name


def _panel_cmap(name: str) -> str:
  return "inferno" if name == "guided_gradcam" else "gray"


def _gradient_display(panel, percentile: float = 99.0):
  """A non-negative gradient map in [0, 1], saturating its top 1%: gradients are heavy-tailed, and scaling by
  the maximum lets a few pixels turn the rest black (captum's visualisation clips outliers the same way)."""
  high = float(np.percentile(panel, percentile))
  if high <= 0:
    return _to_display(panel)
  return np.clip(panel / high, 0.0, 1.0)


def panel_array(image, name: str, map_, alpha: float = 0.5):
  """(H, W, 3) float array in [0, 1]: one image's `name` map as `explanation_figure` draws its panel."""
  panel = _panel(map_)
  if _is_overlay(name):
    return overlay_array(image, panel, alpha)
  return plt.get_cmap(_panel_cmap(name))(_gradient_display(panel))[..., :3]


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
    axis.imshow(panel_array(image, name, maps[name], alpha))
    axis.set_title(PANEL_TITLES.get(name, name), fontsize=9)
  for axis in axes:
    axis.axis("off")
  if title:
    figure.suptitle(title)
  return _finish(figure, path)


def lr_find_figure(lrs, losses, suggestion: float, path: Optional[PathLike] = None, raw_losses=None):
  """The LR range test: (smoothed) loss against learning rate on a log axis, the suggested rate marked.

  `raw_losses`, when given, are the per-batch losses drawn faintly behind the smoothed curve.
  """
  lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
  if lrs.ndim != 1 or lrs.shape != losses.shape or not len(lrs):
    raise ValueError(f"lrs and losses must be equally long non-empty 1-D sequences; got shapes {lrs.shape} "
                     f"and {losses.shape}")
  if np.any(lrs <= 0):
    raise ValueError("learning rates must be positive for the log-scale axis")
  figure, axes = plt.subplots(figsize=(6, 4))
  if raw_losses is not None:
    axes.plot(lrs, np.asarray(raw_losses, np.float64), alpha=0.3, linewidth=0.8, label="loss per batch")
  axes.plot(lrs, losses, label="smoothed loss")
  axes.axvline(suggestion, color="red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
  axes.set_xscale("log")
  # The per-batch loss explodes at the end of the sweep; frame the smoothed curve, which is what matters.
  low, high = float(np.min(losses)), float(np.max(losses))
  margin = 0.1 * (high - low) or 0.1 * abs(high) or 0.1
  axes.set_ylim(low - margin, high + margin)
  axes.set_xlabel("learning rate (log scale)")
  axes.set_ylabel("training loss")
  axes.set_title("LR range test")
  axes.grid(alpha=0.3, which="both")
  axes.legend()
  return _finish(figure, path)


# Sobel kernels as a CNN applies them: cross-correlation (no flip), so SOBEL_X is +1 on the right and
# responds positively where intensity rises from left to right (a vertical edge).
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
SOBEL_Y = SOBEL_X.T.copy()


def sobel(gray):
  """(dx, dy, magnitude) of an (H, W) grayscale image, each (H, W): the two Sobel kernels as one
  `jax.lax.conv_general_dilated` (a 2-output-channel convolution) and sqrt(dx² + dy²).

  The border is padded by repeating the edge pixels (not zeros, which would draw a false edge round the frame).
  """
  import jax
  import jax.numpy as jnp
  gray = np.asarray(gray, np.float32)
  if gray.ndim != 2:
    raise ValueError(f"sobel needs one grayscale (H, W) image; got shape {gray.shape}")
  kernels = jnp.asarray(np.stack([SOBEL_X, SOBEL_Y], axis=-1)[:, :, None, :])  # HWIO: 1 in, 2 out
  padded = jnp.asarray(np.pad(gray, 1, mode="edge"))[None, :, :, None]
  responses = jax.lax.conv_general_dilated(padded, kernels, window_strides=(1, 1), padding="VALID",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
  dx, dy = responses[..., 0], responses[..., 1]
  return np.asarray(dx), np.asarray(dy), np.asarray(jnp.sqrt(dx ** 2 + dy ** 2))


def _first_conv_kernel(variables):
  """(layer name, HWIO kernel) of the first convolution in the parameters, in the model's layer order."""
  def walk(tree, prefix):
    for name, value in tree.items():
      path = f"{prefix}/{name}" if prefix else name
      if name == "kernel" and getattr(value, "ndim", 0) == 4:
        return prefix, value
      if isinstance(value, Mapping):
        found = walk(value, path)
        if found:
          return found
    return None
  found = walk(variables.get("params", {}), "")
  if found is None:
    raise ValueError("the model has no convolution (no 4-D 'kernel' in variables['params'])")
  return found


def convolution_demo(photo_path: PathLike, *, model=None, variables=None, path: Optional[PathLike] = None,
                     image_size: Optional[int] = None, preprocess: Union[str, Mapping] = "rescale",
                     max_size: int = 256, max_channels: int = 16):
  """The KDnuggets tutorial's first figure: a photo's Sobel dx, dy and gradient magnitude (hand-made
  convolutions), and, given a trained `model` and its `variables`, its first-layer filters (learned
  convolutions) and their activations on the same photo.

  The photo is shrunk to at most `max_size` pixels a side for the Sobel panels; the model sees it resized to
  `image_size` (its training size, e.g. `config.image_size`), preprocessed with `preprocess` (a mode of
  `cnnjax.data.preprocess` or its keyword arguments, e.g. `cnnjax.train.experiment.preprocess_settings(config)`).
  """
  from PIL import Image
  if (model is None) != (variables is None):
    raise ValueError("pass both model and variables (e.g. from cnnjax.train.restore(workdir)), or neither")
  if model is not None and not image_size:
    raise ValueError("image_size is required with a model: the size it was trained on (config.image_size)")
  try:
    photo = Image.open(photo_path)
    photo.load()
  except (OSError, ValueError) as error:
    raise ValueError(f"cannot read the photo {photo_path}: {error}") from None
  photo = photo.convert("RGB")
  shown = photo.copy()
  shown.thumbnail((max_size, max_size), Image.BILINEAR)
  gray = np.asarray(shown.convert("L"), np.float32) / 255.0
  dx, dy, magnitude = sobel(gray)

  figure = plt.figure(figsize=(13, 7.5 if model is not None else 3.4))
  sobel_part, model_part = figure.subfigures(2, 1, height_ratios=(1, 1.25)) if model is not None else (figure, None)
  axes = sobel_part.subplots(1, 4)
  panels = ((gray, "gray", "grayscale photo"), (dx, "RdBu_r", "Sobel x (dx)"), (dy, "RdBu_r", "Sobel y (dy)"),
            (magnitude, "gray", "magnitude sqrt(dx² + dy²)"))
  for axis, (panel, cmap, title) in zip(axes, panels):
    if cmap == "RdBu_r":  # signed responses: white is zero
      limit = float(np.abs(panel).max()) or 1.0
      axis.imshow(panel, cmap=cmap, vmin=-limit, vmax=limit)
    else:
      axis.imshow(panel, cmap=cmap)
    axis.set_title(title, fontsize=9)
    axis.axis("off")
  sobel_part.suptitle("hand-made convolutions: Sobel kernels via jax.lax.conv_general_dilated", fontsize=10)
  if model is not None:
    _draw_first_layer(model_part, photo, model, variables, image_size, preprocess, max_channels)
  return _finish(figure, path)


def _draw_first_layer(container, photo, model, variables, image_size: int, preprocess, max_channels: int):
  from PIL import Image

  from cnnjax import data as data_lib
  from cnnjax import explain
  layer, kernel = _first_conv_kernel(variables)
  kernel = np.asarray(kernel, np.float32)
  resized = photo.resize((image_size, image_size), Image.BILINEAR)
  if kernel.shape[2] == 1:
    resized = resized.convert("L")
  pixels = np.asarray(resized, np.float32).reshape(1, image_size, image_size, -1)
  settings = {"mode": preprocess} if isinstance(preprocess, str) else dict(preprocess)
  images = data_lib.preprocess(pixels, **settings)
  feature_map = np.asarray(explain.activations(model, variables, images, layer)[layer])[0]

  input_part, filter_part, activation_part = container.subfigures(1, 3, width_ratios=(1, 1.6, 1.6))
  axis = input_part.subplots()
  axis.imshow(np.asarray(resized), cmap="gray", interpolation="nearest")
  axis.set_title(f"model input ({image_size}x{image_size})", fontsize=9)
  axis.axis("off")
  filters = _filter_tiles(kernel, max_channels)
  _draw_tiles(filter_part, filters, math.ceil(math.sqrt(len(filters))), cmap="gray")
  filter_part.suptitle(f"learned first-layer filters ({layer}, {kernel.shape[0]}x{kernel.shape[1]})",
                       fontsize=9)
  channels = min(feature_map.shape[-1], max_channels)
  _draw_tiles(activation_part, [feature_map[..., c] for c in range(channels)], math.ceil(math.sqrt(channels)),
              [str(c) for c in range(channels)])
  activation_part.suptitle(f"their activations ({layer} output)", fontsize=9)


def ranked_explanations_figure(rows, path: Optional[PathLike] = None, title: Optional[str] = None,
                               alpha: float = 0.5):
  """Rows of explanations, one method per row, e.g. a dataset's best- and worst-explained images (explain.py
  --dataset's summary.png).

  Args:
    rows: (label, method name, tiles) per row, tiles (image, map, caption) with one image's (H, W, C) pixels and its
      (H, W) or (H, W, C) map, drawn as `explanation_figure` draws that method's panel.
  """
  if not rows or not any(tiles for _, _, tiles in rows):
    raise ValueError("rows is empty; pass (label, method, [(image, map, caption), ...]) per row")
  cols = max(len(tiles) for _, _, tiles in rows)
  figure, axes = plt.subplots(len(rows), cols, figsize=(1.9 * cols + 0.8, 2.3 * len(rows)), squeeze=False)
  for row_axes, (label, method, tiles) in zip(axes, rows):
    for index, axis in enumerate(row_axes):
      axis.set_xticks([])
      axis.set_yticks([])
      for spine in axis.spines.values():
        spine.set_visible(index < len(tiles))
      if index < len(tiles):
        image, map_, caption = tiles[index]
        axis.imshow(panel_array(image, method, map_, alpha))
        axis.set_title(caption, fontsize=7)
    row_axes[0].set_ylabel(label, fontsize=8)
  if title:
    figure.suptitle(title, fontsize=9)
  return _finish(figure, path)


def _pixels(image):
  """An (H, W, C) visualization for imshow: [0, 1] pixels as they are, any other range stretched to [0, 1]."""
  image = np.asarray(image, np.float32)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  return image if image.min() >= 0 and image.max() <= 1 else _to_display(image)


def class_gallery(images, names: Sequence[str], cols: int = 5, path: Optional[PathLike] = None,
                  title: Optional[str] = None, size: float = 1.8):
  """Feature visualizations of classes side by side (issue #17), one titled tile per image.

  Args:
    images: (N, H, W, C) images, [0, 1] pixels (e.g. `explain.parameterization.from_model_input` of what
      `explain.maximize_activation` returns) or model inputs of any range (stretched per image).
    names: N titles, e.g. the class names.
    cols: tiles per row. path: where to save the PNG (None: only return the figure). size: inches per tile.
  Returns:
    the matplotlib figure.
  """
  images = np.asarray(images)
  if images.ndim != 4 or len(images) != len(names) or not len(images):
    raise ValueError(f"class_gallery needs (N, H, W, C) images and N names; got shape {images.shape} and "
                     f"{len(names)} names")
  if cols < 1:
    raise ValueError(f"cols must be positive; got {cols}")
  figure = _grid([_pixels(image) for image in images], min(cols, len(images)), list(names), size=size)
  if title:  # above the tiles' own titles, which a default suptitle would overlap on a single row
    figure.suptitle(title, y=1.0 + 0.25 / math.ceil(len(images) / cols), fontsize=9)
  return _finish(figure, path)


def channel_grid(images, layer: str, channels: Sequence[int], cols: int = 8, path: Optional[PathLike] = None,
                 size: float = 1.2):
  """The feature visualizations of a layer's channels in a grid, each tile titled by its channel (issue #17).

  Args:
    images: (N, H, W, C) visualizations, one per channel of `channels` (as `class_gallery`).
    layer: the layer's name, for the title. channels: the N channel indices.
    cols, path, size: as `class_gallery`.
  Returns:
    the matplotlib figure.
  """
  return class_gallery(images, [str(c) for c in channels], cols=cols, path=path, title=f"channels of {layer}",
                       size=size)
