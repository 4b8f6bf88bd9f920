"""Imported pretrained models against their sources, on the shared data (numbers for the README).

  python bench/pretrained_check.py [--images 5000]

- CIFAR ResNet-20/32/44/56 (PyTorch .npz): accuracy on `--images` images of cifar10_jpeg/train.zip (their
  training split: a training-set figure), 'torch' preprocessing; max |logit difference| against PyTorch running the
  `.th` file in akamaster's architecture (bench/peers_torch.py).
- The three Keras CIFAR-10 models: accuracy on the same images and max |logit difference| against Keras 3 (JAX
  backend) running the same file (rebuilt as the weights README shows, with a linear last layer).
- MobileNet 0.25: top-5 ImageNet classes for every photo in shared/data/photos (224x224 resize), and the max
  |probability difference| against keras.applications.MobileNet with the shipped weights.
"""
import argparse
import io
import json
import os
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cnnjax import pretrained  # noqa: E402

SHARED = pretrained.preprocessing.shared_dir()
WEIGHTS = SHARED / "weights"


def cifar_images(count: int):
  """`count` images spread evenly over the (class-sorted) CIFAR-10 zip, with labels."""
  with zipfile.ZipFile(SHARED / "data" / "cifar10_jpeg" / "train.zip") as archive:
    names = sorted(archive.namelist())
    classes = sorted({name.split("/")[1] for name in names})
    picked = names[::max(1, len(names) // count)][:count]
    images = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in picked])
  return images, np.array([classes.index(name.split("/")[1]) for name in picked])


def batched_logits(model, variables, images, batch_size=500):
  apply = jax.jit(model.apply)
  return np.concatenate([np.asarray(apply(variables, images[start:start + batch_size]))
                         for start in range(0, len(images), batch_size)])


def keras_cifar_model(path):
  """The README's Keras 3 rebuild of a Keras 2 CIFAR model file, with the softmax dropped (logits)."""
  import keras  # pylint: disable=import-outside-toplevel
  config = json.loads(h5py.File(path, "r").attrs["model_config"])["config"]["layers"]
  stack = [keras.Input((32, 32, 3))]
  for index, layer in enumerate(config):
    settings, kind = layer["config"], layer["class_name"]
    activation = "linear" if index == len(config) - 1 else settings.get("activation")
    if kind == "Conv2D":
      stack.append(keras.layers.Conv2D(settings["filters"], tuple(settings["kernel_size"]),
                                       padding=settings["padding"], activation=activation, name=settings["name"]))
    elif kind == "MaxPooling2D":
      stack.append(keras.layers.MaxPooling2D(tuple(settings["pool_size"]), name=settings["name"]))
    elif kind == "Dropout":
      stack.append(keras.layers.Dropout(settings["rate"], name=settings["name"]))
    elif kind == "Flatten":
      stack.append(keras.layers.Flatten(name=settings["name"]))
    elif kind == "Dense":
      stack.append(keras.layers.Dense(settings["units"], activation=activation, name=settings["name"]))
    else:
      raise ValueError(f"{kind} is not in the README's recipe")
  model = keras.Sequential(stack)
  model.load_weights(path)
  return model


def torch_cifar_logits(path, inputs, batch_size=500):
  """PyTorch's logits for a CIFAR ResNet `.th` file on NHWC inputs."""
  import torch  # pylint: disable=import-outside-toplevel
  from peers_torch import CifarResNet  # pylint: disable=import-outside-toplevel
  depth = int(path.name[len("resnet"):].split("-")[0])
  module = CifarResNet((depth - 2) // 6)
  state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
  module.load_state_dict({key.removeprefix("module."): value for key, value in state.items()}, strict=False)
  with torch.no_grad():
    return np.concatenate([module.eval()(torch.from_numpy(np.array(inputs[start:start + batch_size]))
                                         .permute(0, 3, 1, 2).contiguous()).numpy()
                           for start in range(0, len(inputs), batch_size)])


def photo(path, size=224):
  return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=5000)
  args = parser.parse_args()
  images, labels = cifar_images(args.images)
  print(f"CIFAR-10 train.zip, {len(images)} images (training split)")
  for path in sorted((WEIGHTS / "resnet_cifar").glob("*.th")):
    model, variables = pretrained.load(path)
    inputs = np.asarray(pretrained.preprocess(images.astype(np.float32), pretrained.preprocessing_for(str(path))))
    logits = batched_logits(model, variables, inputs)
    reference = torch_cifar_logits(path, inputs)
    print(f"  {path.name}: accuracy {np.mean(logits.argmax(-1) == labels):.4f}, max |logit - torch| "
          f"{np.abs(logits - reference).max():.2e} (logits up to {np.abs(reference).max():.1f}), argmax agrees "
          f"{np.mean(logits.argmax(-1) == reference.argmax(-1)):.4f}")
  for path in sorted((WEIGHTS / "keras_cifar10").glob("*.h5")):
    model, variables = pretrained.load(path)
    inputs = np.asarray(pretrained.preprocess(images, pretrained.preprocessing_for(str(path))))
    logits = batched_logits(model, variables, inputs)
    reference = keras_cifar_model(str(path)).predict(inputs, batch_size=500, verbose=0)
    print(f"  {path.name}: accuracy {np.mean(logits.argmax(-1) == labels):.4f}, max |logit - keras| "
          f"{np.abs(logits - reference).max():.2e} (logits up to {np.abs(reference).max():.1f}), argmax agrees "
          f"{np.mean(logits.argmax(-1) == reference.argmax(-1)):.4f}")

  import keras  # pylint: disable=import-outside-toplevel
  path = str(WEIGHTS / "mobilenet" / "mobilenet_2_5_224_tf.h5")
  model, variables = pretrained.load(path)
  reference = keras.applications.MobileNet(alpha=0.25, weights=path)
  photos = sorted(p for p in (SHARED / "data" / "photos").iterdir() if p.suffix.lower() in (".jpg", ".png"))
  inputs = np.asarray(pretrained.preprocess(np.stack([photo(p) for p in photos]), pretrained.preprocessing_for(path)))
  logits = np.asarray(jax.jit(model.apply)(variables, inputs))
  difference = np.abs(np.asarray(jax.nn.softmax(logits)) - reference.predict(inputs, verbose=0)).max()
  print(f"MobileNet 0.25 (224x224 bilinear resize, 'tf' mode); max |probability - keras| {difference:.2e}")
  for name, top5 in zip(photos, pretrained.decode_predictions(logits, top=5)):
    print(f"  {name.name}: " + ", ".join(f"{label} {probability:.3f}" for _, label, probability in top5))


if __name__ == "__main__":
  main()
