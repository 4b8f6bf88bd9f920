"""LeNet-5 (LeCun et al. 1998) as the Keras tutorials write it: 32x32x1 input, two 5x5 'valid' convolutions
(6 and 16 maps) each followed by 2x2 pooling, then Dense 120 - Dense 84 - predictions (61,706 parameters for
10 classes). Defaults follow the paper: tanh and average pooling (`activation='relu', pooling='max'` for the
modern variant)."""
import flax.linen as nn

from cnnjax.models import layers
from cnnjax.models.layers import ConvSpec, PoolSpec

STACK = (ConvSpec(6, 5, padding="valid"), PoolSpec(), ConvSpec(16, 5, padding="valid"), PoolSpec())
HIDDEN_UNITS = (120, 84)


class LeNet5(layers.SequentialCNN):
  activation: str = "tanh"
  pooling: str = "average"

  @nn.compact
  def __call__(self, images, train: bool = False):
    return layers.sequential_cnn(self, "lenet5", images, train, STACK, HIDDEN_UNITS)
