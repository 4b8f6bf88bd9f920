"""One residual network for every depth: ImageNet ResNet-18/34/50/101/152 and CIFAR ResNet-20/32/44/56.

Names follow Keras applications (`conv1_conv`, `conv1_bn`, `conv1_relu`, `pool1_pool`,
`conv{s}_block{b}_{0..3}_{conv,bn,relu}`, `conv{s}_block{b}_add`, `conv{s}_block{b}_out`, `avg_pool`,
`predictions`), all direct children of the model, so `variables['params']['conv5_block3_3_conv']` is where Keras
keeps it. `_0_*` is the projection shortcut; `_1_*`.. the residual branch. Stage s (2, 3, ...) halves the map
(except stage 2 after the stem's pooling).

ImageNet layout (Keras ResNet50): convolutions with biases, BN epsilon 1.001e-5, stride on the first 1x1 of a
bottleneck (v1; `stride_on_3x3=True` moves it to the 3x3, torchvision's "v1.5"). Paddings are explicit and
symmetric (3 for the 7x7 stem, 1 for 3x3), as Keras's ZeroPadding layers and torchvision both do. The 3x3/2
stem pool pads with zeros like Keras's `pool1_pad`. ResNet-18/34 (basic blocks) use the same layout.

CIFAR layout (He et al. 2016 sec. 4.2): a 3x3 16-channel stem without pooling, three stages of basic blocks
(16, 32, 64 channels), no biases, BN epsilon 1e-5, parameter-free "option A" shortcuts (subsample, zero-pad
the channels).
"""
import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import layers, xla_cpu

BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "cifar")
SHORTCUTS = ("projection", "zero_pad")


def _zero_pad_shortcut(inputs, features: int, strides: int):
  """He et al.'s option A: take every `strides`-th pixel and zero-pad the new channels on both sides."""
  subsampled = inputs[:, ::strides, ::strides, :]
  extra = features - inputs.shape[-1]
  return jnp.pad(subsampled, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


def residual_block(inputs, name: str, width: int, strides: int, *, block: str, shortcut: str,
                   stride_on_3x3: bool, conv, norm, act):
  """One block, built from plain functions so that its layers are direct children of the model."""
  features = width * 4 if block == "bottleneck" else width
  if strides == 1 and inputs.shape[-1] == features:
    residual = inputs
  elif shortcut == "projection":
    residual = conv(features, (1, 1), (strides, strides), "VALID", name=f"{name}_0_conv")(inputs)
    residual = norm(name=f"{name}_0_bn")(residual)
  else:
    residual = _zero_pad_shortcut(inputs, features, strides)

  if block == "bottleneck":
    first_stride, middle_stride = (1, strides) if stride_on_3x3 else (strides, 1)
    branch = ((width, 1, first_stride), (width, 3, middle_stride), (features, 1, 1))
  else:
    branch = ((width, 3, strides), (width, 3, 1))
  outputs = inputs
  for index, (channels, kernel, stride) in enumerate(branch, start=1):
    pad = kernel // 2
    outputs = conv(channels, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)),
                   name=f"{name}_{index}_conv")(outputs)
    outputs = norm(name=f"{name}_{index}_bn")(outputs)
    if index < len(branch):
      outputs = act(name=f"{name}_{index}_relu")(outputs)
  outputs = layers.Add(name=f"{name}_add")(residual, outputs)
  # Through the identity shortcut each block's output is an elementwise function of every earlier block of its
  # stage; pinned here, XLA:CPU stops recomputing whole stages inside its layout copies (see
  # `xla_cpu.materialized`; other platforms take the value as it is).
  return xla_cpu.materialize(act(name=f"{name}_out")(outputs))


class ResNet(nn.Module):
  """A residual network: `block` type, blocks per stage, stage widths and stem; see the module docstring."""
  num_classes: int
  stage_sizes: Tuple[int, ...] = (3, 4, 6, 3)
  block: str = "bottleneck"
  widths: Tuple[int, ...] = (64, 128, 256, 512)
  stem: str = "imagenet"
  shortcut: str = "projection"
  conv_bias: bool = True
  bn_epsilon: float = 1.001e-5
  stride_on_3x3: bool = False
  activation: str = "relu"
  head: str = "gap"  # 'gap' (Keras's avg_pool) or 'flatten' (the transfer tutorials' Flatten - Dropout - Dense)
  dropout: float = 0.0  # before `predictions`
  axis_name: Optional[str] = None
  dtype: Any = None

  def _check(self):
    for field, allowed in (("block", BLOCKS), ("stem", STEMS), ("shortcut", SHORTCUTS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"ResNet: {field}={getattr(self, field)!r} is invalid; choose one of {allowed}")
    if len(self.widths) != len(self.stage_sizes):
      raise ValueError(f"ResNet: {len(self.widths)} widths for {len(self.stage_sizes)} stages; give one per stage")
    layers.check_options(self, "resnet")

  @nn.compact
  def __call__(self, images, train: bool = False):
    self._check()
    dtype = layers.compute_dtype(self.dtype)
    inputs = layers.model_inputs(images, dtype)
    conv = functools.partial(layers.Conv, use_bias=self.conv_bias, dtype=dtype)
    norm = functools.partial(layers.batch_norm, train, epsilon=self.bn_epsilon, axis_name=self.axis_name,
                             dtype=dtype)
    act = functools.partial(layers.Activation, self.activation)

    if self.stem == "imagenet":
      x = conv(self.widths[0], (7, 7), (2, 2), ((3, 3), (3, 3)), name="conv1_conv")(inputs)
    else:
      x = conv(self.widths[0], (3, 3), (1, 1), ((1, 1), (1, 1)), name="conv1_conv")(inputs)
    x = act(name="conv1_relu")(norm(name="conv1_bn")(x))
    if self.stem == "imagenet":
      x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # Keras's pool1_pad: zeros, not -inf
      x = layers.Pool("max", (3, 3), (2, 2), name="pool1_pool")(x)

    for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for index in range(blocks):
        x = residual_block(x, f"conv{stage + 2}_block{index + 1}", width, 2 if stage and not index else 1,
                           block=self.block, shortcut=self.shortcut, stride_on_3x3=self.stride_on_3x3,
                           conv=conv, norm=norm, act=act)
    x = layers.GlobalAveragePool(name="avg_pool")(x) if self.head == "gap" else layers.Flatten(name="flatten")(x)
    x = layers.dropout(self.dropout, train, name="dropout")(x)
    return layers.Dense(self.num_classes, dtype=dtype, name="predictions")(x).astype(jnp.float32)


def imagenet(stage_sizes, block: str) -> dict:
  return dict(stage_sizes=stage_sizes, block=block)


def cifar(blocks_per_stage: int) -> dict:
  return dict(stage_sizes=(blocks_per_stage,) * 3, block="basic", widths=(16, 32, 64), stem="cifar",
              shortcut="zero_pad", conv_bias=False, bn_epsilon=1e-5)


ARCHITECTURES = {
    "resnet18": imagenet((2, 2, 2, 2), "basic"),
    "resnet34": imagenet((3, 4, 6, 3), "basic"),
    "resnet50": imagenet((3, 4, 6, 3), "bottleneck"),
    "resnet101": imagenet((3, 4, 23, 3), "bottleneck"),
    "resnet152": imagenet((3, 8, 36, 3), "bottleneck"),
    "resnet20": cifar(3),
    "resnet32": cifar(5),
    "resnet44": cifar(7),
    "resnet56": cifar(9),
}
