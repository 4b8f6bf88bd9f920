"""AlexNet as in Bakshi's report (single tower, no local response normalisation): conv 96@11x11/4 'valid',
3x3/2 pooling, conv 256@5x5, pooling, three 3x3 convolutions (384, 384, 256) each followed by dropout 0.25,
pooling, then three Dense 4096 each followed by dropout 0.25, and `predictions`. Needs at least 67x67 inputs
(227x227 in the report). Keras automatic layer names."""
from typing import Optional

import flax.linen as nn

from cnnjax.models import layers
from cnnjax.models.layers import ConvSpec, DropoutSpec, PoolSpec

_POOL = PoolSpec(3, 2)
STACK = (ConvSpec(96, 11, 4, padding="valid"), _POOL, ConvSpec(256, 5, padding="same"), _POOL,
         ConvSpec(384, 3, padding="same"), DropoutSpec(0.25), ConvSpec(384, 3, padding="same"), DropoutSpec(0.25),
         ConvSpec(256, 3, padding="same"), DropoutSpec(0.25), _POOL)
HIDDEN_UNITS = (4096, 4096, 4096)


class AlexNet(layers.SequentialCNN):
  """conv_dropout: rate after conv 3-5 (None = 0.25); dropout: rate after each hidden Dense."""
  dropout: float = 0.25
  conv_dropout: Optional[float] = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    return layers.sequential_cnn(self, "alexnet", images, train, STACK, HIDDEN_UNITS)
