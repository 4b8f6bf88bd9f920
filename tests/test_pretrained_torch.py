"""Imported PyTorch weights against PyTorch itself: the same logits from the same file, to 1e-4 relative.

torch and torchvision are test peers (requirements-peers.txt). torchvision's own VGG16 and ResNet50 (v1.5) get
random weights (BatchNorm statistics randomised too, so the conversion of every tensor matters), are saved
with `torch.save` and imported; the shipped CIFAR ResNet `.th` files run in bench/peers_torch.py's transcription of
akamaster/pytorch_resnet_cifar10 (the code they were trained with).
"""
import numpy as np
import pytest

from cnnjax import pretrained
from test_pretrained import assert_close, cifar_resnet_path

torch = pytest.importorskip("torch", reason="torch is a test peer: pip install -r requirements-peers.txt")
torchvision = pytest.importorskip("torchvision", reason="pip install -r requirements-peers.txt")
from bench.peers_torch import CifarResNet  # noqa: E402  # akamaster's architecture, shared with bench/
nn = torch.nn


def torch_logits(module, images: np.ndarray) -> np.ndarray:
  """NHWC float images through a PyTorch module in eval mode."""
  with torch.no_grad():
    return module.eval()(torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()).numpy()


def randomise_batch_norms(module, seed: int):
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for layer in module.modules():
      if isinstance(layer, nn.BatchNorm2d):
        channels = layer.num_features
        layer.weight.copy_(torch.rand(channels, generator=generator) * 0.5 + 0.3)
        layer.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
        layer.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
        layer.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)


@pytest.mark.parametrize("arch, size", [("resnet50", 96), ("vgg16", 224)])
def test_torchvision_models_match_torch(arch, size, tmp_path):
  """VGG16 runs at 224 px, where torchvision's adaptive average pool (to 7x7) is the identity, as in the
  ImageNet weights; ResNet50's global pool makes any size valid."""
  torch.manual_seed(0)
  module = getattr(torchvision.models, arch)(weights=None, num_classes=7)
  randomise_batch_norms(module, seed=1)
  torch.save(module.state_dict(), tmp_path / f"{arch}.pth")
  model, variables = pretrained.load(tmp_path / f"{arch}.pth")
  images = np.random.RandomState(2).normal(0, 1, (2, size, size, 3)).astype(np.float32)
  ours = np.asarray(model.apply(variables, images))
  assert_close(ours, torch_logits(module, images))
  assert np.ptp(ours) > 1e-3  # a meaningful comparison: the logits differ between classes


def load_cifar_resnet_in_torch(path, depth: int) -> CifarResNet:
  checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  module = CifarResNet((depth - 2) // 6)
  state = {key.removeprefix("module."): value for key, value in checkpoint["state_dict"].items()}
  missing, unexpected = module.load_state_dict(state, strict=False)
  assert not unexpected and all(key.endswith("num_batches_tracked") for key in missing)
  return module


@pytest.mark.parametrize("depth", [20, 56])
def test_shipped_cifar_resnets_match_torch(shared_dir, depth):
  path = cifar_resnet_path(shared_dir, depth).with_suffix(".th")
  module = load_cifar_resnet_in_torch(path, depth)
  model, variables = pretrained.load(path)
  # Real-looking inputs after 'torch' preprocessing: uint8 noise scaled like the repo's normalisation.
  images = pretrained.preprocess(np.random.RandomState(3).randint(0, 256, (8, 32, 32, 3)).astype(np.float32),
                                 "torch")
  images = np.asarray(images)
  assert_close(model.apply(variables, images), torch_logits(module, images))
