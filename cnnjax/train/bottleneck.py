"""Bottleneck features (the Keras blog's recipe): a (pretrained) backbone runs once over the data to
`config.bottleneck.layer`, the features are cached under `<workdir>/bottleneck/`, and a dense head trains on them
through the same loop as any model (checkpoints, exact resume, sharding); its best weights also go to head.npz."""
import functools
import os
import time
from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from cnnjax import data as data_lib
from cnnjax.models import introspect
from cnnjax.models import layers
from cnnjax.train import experiment
from cnnjax.train import optim


class DenseHead(nn.Module):
  """Flatten - (Dense relu - Dropout) per hidden layer - Dense `predictions` (logits), Keras names."""
  num_classes: int
  hidden: Tuple[int, ...] = (512, 256)
  dropout: Tuple[float, ...] = (0.5, 0.2)

  @nn.compact
  def __call__(self, features, train: bool = False):
    x = layers.Flatten(name="flatten")(features)
    for index, (units, rate) in enumerate(zip(self.hidden, self.dropout)):
      suffix = f"_{index}" if index else ""
      x = layers.Dense(units, activation="relu", name=f"dense{suffix}")(x)
      x = layers.dropout(rate, train, name=f"dropout{suffix}")(x)
    return layers.Dense(self.num_classes, name="predictions")(x).astype(jnp.float32)


def _npy_save(path: str, array: np.ndarray) -> None:
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "wb") as f:
    np.save(f, array)
  os.replace(temporary, path)


def bottleneck_features(model: nn.Module, variables: Dict, images: np.ndarray, layer: str, batch_size: int, *,
                        preprocess: Optional[Dict] = None, cache_path: Optional[str] = None) -> np.ndarray:
  """The output of `layer` for every image (uint8 or [0, 255] floats, NHWC), in inference mode.

  One jitted program over padded batches of `batch_size`; with `cache_path`, a saved .npy of the same
  length is returned without running the model, and new features are written atomically.
  """
  if cache_path and os.path.exists(cache_path):
    cached = np.load(cache_path)
    if len(cached) == len(images):
      return cached
  if layer not in introspect.layer_names(model, images.shape[1:]):
    raise ValueError(f"bottleneck layer {layer!r} is not a layer of the model; see cnnjax.explain.layer_names")
  preprocess = preprocess or {"mode": "rescale"}

  @jax.jit
  def extract(images):
    inputs = data_lib.preprocess(images.astype(jnp.float32), **preprocess)
    return introspect.capture_outputs(model, variables, inputs, (layer,))[1][layer]

  outputs = []
  for start in range(0, len(images), batch_size):
    batch = np.asarray(images[start:start + batch_size])
    padding = batch_size - len(batch)
    if padding:  # one shape, one compilation
      batch = np.concatenate([batch, np.zeros((padding, *batch.shape[1:]), batch.dtype)])
    outputs.append(np.asarray(extract(batch))[:batch_size - padding])
  features = np.concatenate(outputs).astype(np.float32)
  if cache_path:
    os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
    _npy_save(cache_path, features)
  return features


def feature_splits(config: ml_collections.ConfigDict, workdir: str, model: nn.Module, variables: Dict,
                   splits: data_lib.Splits) -> data_lib.Splits:
  """`splits` with each image replaced by its features (cached under `<workdir>/bottleneck/`)."""
  layer, started = config.bottleneck.layer, time.time()
  extract = functools.partial(bottleneck_features, model, variables, layer=layer, batch_size=config.eval_batch_size,
                              preprocess=experiment.preprocess_settings(config))

  def features_of(name: str):
    images = getattr(splits, name)
    if images is None or not len(images):
      return None
    if not isinstance(images, data_lib.ImageSet):
      raise ValueError(f"config.bottleneck caches the features of every image in memory, but the dataset is "
                       "streamed (its decoded images exceed config.in_memory_limit_gb); raise "
                       "config.in_memory_limit_gb or set config.limit_per_class")
    cache = os.path.join(workdir, "bottleneck", f"{name}_{layer}.npy")
    return data_lib.ImageSet(extract(images.images, cache_path=cache), images.labels)

  train, validation, test = (features_of(name) for name in ("train", "validation", "test"))
  counts = ", ".join(f"{len(part)} {name}" for name, part in (("train", train), ("validation", validation),
                                                               ("test", test)) if part is not None)
  print(f"bottleneck features {layer} {train.images.shape[1:]}: {counts} images in {time.time() - started:.1f}s")
  return data_lib.Splits(train=train, validation=validation, class_names=splits.class_names, skipped=splits.skipped,
                         test=test)


def _save_head(workdir: str, variables: Dict) -> None:
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  temporary = os.path.join(workdir, f"head.npz.tmp-{os.getpid()}")
  with open(temporary, "wb") as f:
    np.savez(f, **flat)
  os.replace(temporary, os.path.join(workdir, "head.npz"))


def task(config: ml_collections.ConfigDict, workdir: str, model: nn.Module, variables: Dict,
         splits: data_lib.Splits) -> experiment.Task:
  """The loop's Task: a `DenseHead` on the features, trained with config's optimizer (nothing frozen)."""
  features = feature_splits(config, workdir, model, variables, splits)
  head = DenseHead(config.num_classes, tuple(config.bottleneck.hidden), tuple(config.bottleneck.dropout))
  steps_per_epoch = experiment.train_steps_per_epoch(config, len(features.train))
  schedule = optim.create_schedule(config, steps_per_epoch)
  return experiment.Task(head, features, features.train.images.shape[1:], steps_per_epoch, schedule,
                   optim.create_optimizer(config, schedule), preprocess=None,
                   finish=functools.partial(_save_head, workdir))
