"""MobileNet v1 (Howard et al. 2017) with the Keras applications layout, so Keras weights load by name.

`conv1` (3x3/2, 'same') - `conv1_bn` - `conv1_relu`, then 13 depthwise-separable blocks
`conv_dw_{i}` (3x3 DepthwiseConv, param `depthwise_kernel`) - `conv_dw_{i}_bn` - `conv_dw_{i}_relu` -
`conv_pw_{i}` (1x1) - `conv_pw_{i}_bn` - `conv_pw_{i}_relu`, then `global_average_pooling2d` (1x1 map) -
`dropout` - `conv_preds` (1x1 conv with bias: the logits). ReLU6, BN epsilon 1e-3, no other biases. Stride-2
depthwise convolutions pad one pixel at the bottom/right only (Keras's `conv_pad_{i}` + 'valid'), i.e.
TensorFlow 'same'. Channel counts are `int(filters * alpha)`; alpha 0.25 at 224x224 with 1000 classes has
475,544 parameters (counting BN statistics, as Keras does).
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import layers

# (pointwise filters, depthwise stride) of blocks 1..13.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1))
STEM_FILTERS = 32
_BOTTOM_RIGHT = ((0, 1), (0, 1))


def _depthwise_padding(stride: int):
  return "SAME" if stride == 1 else _BOTTOM_RIGHT


def spatial_ops() -> list:
  return [((3, 3), (2, 2), "SAME")] + [((3, 3), (s, s), _depthwise_padding(s)) for _, s in BLOCKS]


class MobileNet(nn.Module):
  """alpha: width multiplier (> 0; Keras's pretrained ones are 0.25, 0.5, 0.75, 1.0). dropout: before conv_preds."""
  num_classes: int
  alpha: float = 1.0
  dropout: float = 1e-3
  activation: str = "relu6"
  axis_name: Optional[str] = None
  dtype: Any = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    layers.check_options(self, "mobilenet")
    dtype = layers.compute_dtype(self.dtype)
    inputs = layers.model_inputs(images, dtype)
    layers.check_input_size(inputs, "mobilenet", spatial_ops())

    def conv_bn_act(x, conv):
      x = layers.batch_norm(train, name=f"{conv.name}_bn", axis_name=self.axis_name, dtype=dtype)(conv(x))
      return layers.Activation(self.activation, name=f"{conv.name}_relu")(x)

    x = conv_bn_act(inputs, layers.Conv(int(STEM_FILTERS * self.alpha), (3, 3), (2, 2), "SAME", use_bias=False,
                                        dtype=dtype, name="conv1"))
    for index, (filters, stride) in enumerate(BLOCKS, start=1):
      x = conv_bn_act(x, layers.DepthwiseConv((3, 3), (stride, stride), _depthwise_padding(stride), dtype=dtype,
                                              name=f"conv_dw_{index}"))
      x = conv_bn_act(x, layers.Conv(int(filters * self.alpha), (1, 1), use_bias=False, dtype=dtype,
                                     name=f"conv_pw_{index}"))
    x = layers.GlobalAveragePool(keepdims=True, name="global_average_pooling2d")(x)
    x = layers.dropout(self.dropout, train, name="dropout")(x)
    x = layers.Conv(self.num_classes, (1, 1), dtype=dtype, name="conv_preds")(x)
    return x.reshape((x.shape[0], self.num_classes)).astype(jnp.float32)
