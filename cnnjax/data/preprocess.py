"""Pixel normalisation on the device, the conventions of keras.applications and of common training recipes.

All modes take uint8 or float images in [0, 255] (NHWC, RGB) and return float32; `mode` is static under jit.
"""
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

MODES = ("rescale", "mean_std", "caffe", "tf", "torch")
# keras.applications.imagenet_utils: caffe means are in BGR order and 0..255 units.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def _need_rgb(images, mode):
  if images.shape[-1] != 3:
    raise ValueError(f"preprocess mode {mode!r} needs RGB images (last axis 3), got shape {images.shape}")


def preprocess(images, mode: str, *, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None) -> jnp.ndarray:
  """Normalises images in [0, 255].

  'rescale': x / 255.  'mean_std': (x / 255 - mean) / std per channel, with mean and std in [0, 1] units
  (e.g. from `channel_mean_std`).  'caffe': RGB -> BGR minus the ImageNet BGR means, no scaling.
  'tf': x / 127.5 - 1.  'torch': (x / 255 - ImageNet mean) / ImageNet std.
  """
  if mode not in MODES:
    raise ValueError(f"unknown preprocess mode {mode!r}; use one of {', '.join(MODES)}")
  if mode == "mean_std" and (mean is None or std is None):
    raise ValueError("preprocess mode 'mean_std' needs both mean and std (per channel, in [0, 1] units)")
  if mode != "mean_std" and (mean is not None or std is not None):
    raise ValueError(f"mean and std are used only by mode 'mean_std', not {mode!r}; drop them or change mode")
  images = jnp.asarray(images).astype(jnp.float32)
  if mode == "rescale":
    return images / 255.0
  if mode == "tf":
    return images / 127.5 - 1.0
  if mode == "caffe":
    _need_rgb(images, mode)
    return images[..., ::-1] - jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)
  if mode == "torch":
    _need_rgb(images, mode)
    mean, std = TORCH_MEAN, TORCH_STD
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  if mean.size not in (1, images.shape[-1]) or std.size not in (1, images.shape[-1]):
    raise ValueError(f"mean and std need 1 or {images.shape[-1]} values (one per channel), got "
                     f"{mean.size} and {std.size}")
  return (images / 255.0 - mean) / std


def channel_mean_std(images: np.ndarray, chunk: int = 4096):
  """Per-channel mean and std of uint8 images in [0, 1] units (for mode 'mean_std'), computed on the host."""
  total = np.zeros(images.shape[-1])
  squares = np.zeros(images.shape[-1])
  for start in range(0, len(images), chunk):  # chunks: a float64 copy of all of CIFAR-10 would be 1.2 GB
    pixels = images[start:start + chunk].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    total += pixels.sum(0)
    squares += np.square(pixels).sum(0)
  count = images.size // images.shape[-1]
  mean = total / count
  return mean.astype(np.float32), np.sqrt(np.maximum(squares / count - mean ** 2, 0)).astype(np.float32)
