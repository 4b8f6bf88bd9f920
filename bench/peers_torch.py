"""PyTorch twins of the cnnjax architectures the benchmarks train and explain (same layers, same parameter
counts; bench/run.py checks the counts before timing anything).

- simple_cnn: conv6 'same' - conv16 'valid' - pool - conv16 'same' - conv32 'valid' - pool - flatten - dense512
  (ReLU, dropout 0.5) - dense10, as cnnjax.models.simple.PLANS['simple_cnn'].
- vgg16_cifar: VGG16 configuration D with BatchNorm after each conv (conv bias kept, as cnnjax's vgg16 with
  batch_norm=True), global average pooling and one dense layer: cnnjax `vgg16(batch_norm=True, head='gap')`.
- resnet20: He et al.'s CIFAR ResNet with akamaster/pytorch_resnet_cifar10's module names, so its state dicts
  (shared/weights/resnet_cifar) load unchanged.
- resnet50: torchvision's (v1.5, stride on the 3x3); `conv_bias=True` gives every convolution a bias, as
  cnnjax's (Keras-layout) ResNet50 has, so both train the same parameter count.
"""
import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def simple_cnn(num_classes: int = 10) -> nn.Module:
  return nn.Sequential(
      nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Linear(32 * 6 * 6, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, num_classes))


def vgg16_cifar(num_classes: int = 10) -> nn.Module:
  layers, channels = [], 3
  for convs, width in zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)):
    for _ in range(convs):
      layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
      channels = width
    layers.append(nn.MaxPool2d(2))
  return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))


class _BasicBlock(nn.Module):
  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
    self.pad = (planes - in_planes) // 2 if stride != 1 or in_planes != planes else None

  def forward(self, x):
    out = self.relu1(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
    return self.relu2(out + shortcut)


class CifarResNet(nn.Module):
  """akamaster's resnet20/32/44/56 (option A shortcuts). Its ReLUs are nn.ReLU modules (akamaster calls F.relu):
  captum's GuidedBackprop and pytorch-grad-cam's GuidedBackpropReLUModel only modify ReLU modules. Same keys."""

  def __init__(self, blocks_per_stage: int = 3, num_classes: int = 10):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    self.relu = nn.ReLU()
    planes = 16
    for stage, width in enumerate((16, 32, 64), start=1):
      blocks = []
      for index in range(blocks_per_stage):
        blocks.append(_BasicBlock(planes, width, 2 if stage > 1 and index == 0 else 1))
        planes = width
      setattr(self, f"layer{stage}", nn.Sequential(*blocks))
    self.linear = nn.Linear(64, num_classes)

  def forward(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet20(num_classes: int = 10) -> nn.Module:
  return CifarResNet(3, num_classes)


def resnet50(num_classes: int = 1000, conv_bias: bool = False) -> nn.Module:
  model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
  if conv_bias:
    for module in list(model.modules()):
      for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d):
          setattr(module, name, nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                          child.padding, bias=True))
  return model



BUILDERS = {"simple_cnn": simple_cnn, "vgg16": vgg16_cifar, "resnet20": resnet20, "resnet50": resnet50}


def parameter_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
