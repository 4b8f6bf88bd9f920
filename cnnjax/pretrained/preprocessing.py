"""Inputs and outputs of imported models: each source's pixel convention and ImageNet class names."""
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import jax
import numpy as np

import cnnjax
from cnnjax import data
from cnnjax.pretrained import registry

# The pixel convention each weight source was trained with (keys: `registry.source_of`).
MODES = {
    "keras:mobilenet": "tf",  # x / 127.5 - 1
    "keras:vgg16": "caffe", "keras:vgg19": "caffe",  # BGR minus the ImageNet means
    "keras:resnet50": "caffe", "keras:resnet101": "caffe", "keras:resnet152": "caffe",
    "keras:model": "rescale",  # the tutorials' model.save() files train on x / 255
    "torch:resnet_cifar": "torch",  # akamaster's trainer: x / 255, ImageNet mean/std
    "torch:resnet": "torch", "torch:vgg": "torch",  # torchvision
}


def preprocess(images, mode: str):
  """`cnnjax.data.preprocess`: images in [0, 255] (NHWC, RGB) -> float32 normalised by `mode`."""
  return data.preprocess(images, mode)


def preprocessing_for(source: str) -> str:
  """The `preprocess` mode for a weight file path, or a source key such as 'keras:mobilenet' or 'torch:resnet'."""
  source = str(source)
  if source not in MODES:
    if not os.path.exists(source):
      raise ValueError(f"unknown weight source {source!r}: give a weight file or one of {', '.join(MODES)}")
    source = registry.source_of(source)
  return MODES[source]


def shared_dir() -> Path:
  """../shared beside the checkout, or $CNNJAX_SHARED."""
  return Path(os.environ.get("CNNJAX_SHARED") or Path(cnnjax.__file__).resolve().parents[2] / "shared")


def imagenet_class_names() -> List[str]:
  path = shared_dir() / "weights" / "imagenet_classes.json"
  if not path.is_file():
    raise ValueError(f"ImageNet class names not found at {path}; set CNNJAX_SHARED to the folder holding "
                     f"weights/imagenet_classes.json, or pass class_names=")
  return json.loads(path.read_text())


def decode_predictions(logits, top: int = 5, class_names: Optional[Sequence[str]] = None
                       ) -> List[List[Tuple[int, str, float]]]:
  """Per image, the `top` classes as (index, short name, softmax probability), most probable first.

  Names default to the ImageNet-1k names (text before the first comma, e.g. 'tabby').
  """
  logits = np.asarray(logits)
  if logits.ndim != 2:
    raise ValueError(f"decode_predictions expects logits of shape (batch, classes), got {logits.shape}")
  names = list(class_names) if class_names is not None else imagenet_class_names()
  if len(names) != logits.shape[1]:
    raise ValueError(f"{logits.shape[1]} logits per image but {len(names)} class names; pass class_names= "
                     f"with one name per class")
  probabilities = np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1))
  order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top]
  return [[(int(index), names[index].split(",")[0].strip(), float(row[index])) for index in indices]
          for row, indices in zip(probabilities, order)]
