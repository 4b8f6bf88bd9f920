"""VGG 11/13/16/19 (Simonyan & Zisserman 2015, configurations A, B, D, E) with Keras applications names:
`block{b}_conv{i}` (3x3 'same', post-activation), `block{b}_pool`, `flatten`, `fc1`, `fc2`, `predictions`.
VGG16 for 1000 classes at 224x224 has Keras's 138,357,544 parameters.

With `batch_norm=True` (torchvision's vgg*_bn order) each conv is linear and followed by `block{b}_conv{i}_bn`
and `block{b}_conv{i}_relu`. As in Keras, no dropout unless `dropout` > 0 (then after fc1 and fc2).
"""
import flax.linen as nn

from cnnjax.models import layers
from cnnjax.models.layers import ConvSpec, PoolSpec

CONVS_PER_BLOCK = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)


def vgg_stack(depth: int) -> tuple:
  stack = []
  for block, (convs, width) in enumerate(zip(CONVS_PER_BLOCK[depth], WIDTHS), start=1):
    stack += [ConvSpec(width, name=f"block{block}_conv{index}") for index in range(1, convs + 1)]
    stack.append(PoolSpec(name=f"block{block}_pool"))
  return tuple(stack)


class VGG(layers.SequentialCNN):
  depth: int = 16

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.depth not in CONVS_PER_BLOCK:
      raise ValueError(f"VGG depth {self.depth} does not exist; choose one of {sorted(CONVS_PER_BLOCK)}")
    return layers.sequential_cnn(self, f"vgg{self.depth}", images, train, vgg_stack(self.depth), (4096, 4096),
                                 hidden_names=("fc1", "fc2"))
