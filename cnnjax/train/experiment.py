"""What a config builds: the model, its input shape and preprocessing, the data splits and the optimizer; and
the `Task` a run trains."""
import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn
import ml_collections
import optax

from cnnjax import data as data_lib
from cnnjax import models
from cnnjax import pretrained as pretrained_lib
from cnnjax.pretrained import merge
from cnnjax.train import optim


def create_model(config: ml_collections.ConfigDict):
  return models.create(config.model, num_classes=config.num_classes, **config.model_options.to_dict())


def image_shape(config) -> Tuple[int, int, int]:
  return (config.image_size, config.image_size, config.channels)


def check_model_input(model, config) -> None:
  """Builds the model abstractly, so an input/architecture mismatch fails before any compilation."""
  key = jax.eval_shape(jax.random.PRNGKey, 0)  # even PRNGKey(0) would compile a tiny program
  jax.eval_shape(functools.partial(model.init, train=False), key,
                 jax.ShapeDtypeStruct((1, *image_shape(config)), jnp.float32))


def create_optimizer(config: ml_collections.ConfigDict, model, schedule):
  """The config's optimizer, with zero updates for the layers config.freeze / freeze_first select."""
  return optim.freeze(optim.create_optimizer(config, schedule),
                      optim.frozen_layers(model, image_shape(config), config))


def _repo_relative(path: str) -> str:
  """Relative paths are tried from the working directory, then from the checkout (as configs write them)."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  beside_repo = Path(__file__).resolve().parents[2] / path
  return str(beside_repo) if beside_repo.exists() else path


def resolve_source(config: ml_collections.ConfigDict) -> str:
  """The local file or workdir `config.pretrained` names (downloading `keras:<arch>` once)."""
  source = config.pretrained
  if source.startswith("keras:"):
    return merge.keras_weights(source[len("keras:"):], alpha=config.model_options.get("alpha"),
                               image_size=config.image_size)
  path = _repo_relative(source)
  if not os.path.exists(path):
    raise ValueError(f"config.pretrained={source!r}: no such weight file or workdir")
  return path


def is_workdir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def preprocess_mode(config: ml_collections.ConfigDict) -> str:
  """config.preprocess, where 'auto' means the pretrained source's convention ('rescale' without one)."""
  if config.preprocess != "auto":
    return config.preprocess
  if not config.get("pretrained"):
    return "rescale"
  if config.pretrained.startswith("keras:"):
    return pretrained_lib.preprocessing_for(config.pretrained)
  path = resolve_source(config)
  if is_workdir(path):
    with open(os.path.join(path, "config.json")) as f:
      return preprocess_mode(ml_collections.ConfigDict(json.load(f)))
  return pretrained_lib.preprocessing_for(path)


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy with preprocess='auto' made concrete, so config.json says what the run did."""
  config = config.copy_and_resolve_references()
  if "preprocess" in config and config.preprocess == "auto":
    config.preprocess = preprocess_mode(config)
  return config


def preprocess_settings(config) -> Dict:
  """Keyword arguments of cnnjax.data.preprocess for the config's inputs."""
  settings = {"mode": preprocess_mode(config)}
  if settings["mode"] == "mean_std":
    settings.update(mean=tuple(config.mean), std=tuple(config.std))
  return settings


def augment_settings(config) -> Optional[Dict]:
  settings = config.augment.to_dict()
  return settings if any(settings.values()) else None


def load_splits(config: ml_collections.ConfigDict) -> data_lib.Splits:
  """The config's dataset, decoded and split (streamed where it exceeds config.in_memory_limit_gb); its class count
  must match the model's."""
  splits = data_lib.load(config.dataset, image_size=config.image_size, channels=config.channels,
                         validation_split=config.validation_split, seed=config.seed, data_dir=config.data_dir,
                         limit_per_class=config.limit_per_class, in_memory_limit_gb=config.in_memory_limit_gb)
  if len(splits.class_names) != config.num_classes:
    raise ValueError(f"the dataset has {len(splits.class_names)} classes ({', '.join(splits.class_names[:10])}"
                     f"{', ...' if len(splits.class_names) > 10 else ''}) but config.num_classes="
                     f"{config.num_classes}; set --config.num_classes={len(splits.class_names)}")
  return splits


def train_steps_per_epoch(config: ml_collections.ConfigDict, num_images: int) -> int:
  """Full batches in a training split of `num_images`, capped by config.steps_per_epoch."""
  steps = data_lib.num_batches(num_images, config.batch_size, drop_remainder=True)
  if steps == 0:
    raise ValueError(f"the training split has {num_images} images, fewer than one batch of "
                     f"{config.batch_size}; lower config.batch_size")
  return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


@dataclasses.dataclass
class Task:
  """What a run trains: `model` on `splits` (uint8 images, or float features with preprocess None)."""
  model: nn.Module
  splits: data_lib.Splits
  input_shape: Tuple[int, ...]
  steps_per_epoch: int
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  preprocess: Optional[Dict]
  augment: Optional[Dict] = None
  frozen: Tuple[str, ...] = ()
  initial_variables: Optional[Callable[[Dict], Dict]] = None  # fresh variables -> starting ones (pretrained)
  overlays: bool = False  # TensorBoard Grad-CAM overlays make sense for image models only
  finish: Optional[Callable[[Dict], None]] = None  # called with the best variables (process 0 only)
