"""The same weights in cnnjax and in PyTorch, for the tests that compare explainers with captum and
pytorch-grad-cam: the shipped CIFAR resnet20 (akamaster's weights; bench/peers_torch.py's transcription of its
architecture) and a torchvision ResNet50 with seeded random weights (and randomised BatchNorm statistics, so the
activations are not trivially scaled), moved to cnnjax with `cnnjax.pretrained.load`."""
import os

import numpy as np
import torch

from bench import peers_torch
from cnnjax import pretrained

# (cnnjax layer, torch module path) of the layer the CAM tests explain.
RESNET20_LAYER = ("conv4_block3_out", "layer3")
RESNET50_LAYER = ("conv5_block3_out", "layer4")


def resnet20_pair(shared_dir):
  """(torch model in eval mode, cnnjax model, variables) of the shipped CIFAR resnet20."""
  path = shared_dir / "weights" / "resnet_cifar" / "resnet20-12fca82f.th"
  torch_model = peers_torch.resnet20()
  state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
  torch_model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
  model, variables = pretrained.load(str(path))
  return torch_model.eval(), model, variables


def resnet50_pair(workdir, seed: int = 0):
  """(torch model in eval mode, cnnjax model, variables) of a torchvision ResNet50 with random weights."""
  torch.manual_seed(seed)
  torch_model = peers_torch.resnet50()
  for module in torch_model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.uniform_(-0.1, 0.1)
      module.running_var.uniform_(0.5, 1.5)
  path = os.path.join(workdir, "resnet50.npz")
  np.savez(path, **{k: v.numpy() for k, v in torch_model.state_dict().items()})
  model, variables = pretrained.load(path)
  return torch_model.eval(), model, variables


def nchw(images) -> torch.Tensor:
  """(B, H, W, C) numpy/jax images -> the (B, C, H, W) float32 tensor torch models take."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2)))


def nhwc(tensor) -> np.ndarray:
  """A (B, C, H, W) torch tensor (or numpy array) -> (B, H, W, C) numpy."""
  array = tensor.detach().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
  return array.transpose(0, 2, 3, 1)


def correlation(first, second) -> np.ndarray:
  """Pearson correlation per image of two (B, ...) batches."""
  first, second = (np.asarray(x, np.float64).reshape(len(x), -1) for x in (first, second))
  first = first - first.mean(axis=1, keepdims=True)
  second = second - second.mean(axis=1, keepdims=True)
  return (first * second).sum(1) / np.sqrt((first ** 2).sum(1) * (second ** 2).sum(1))
