"""The small tutorial CNNs (CIFAR-10, smile detection, cats vs dogs) as Keras Sequential models.

Layer names are Keras's automatic ones (`conv2d`, `conv2d_1`, `max_pooling2d`, `batch_normalization`, `dense`,
`dropout`, ...), except the last layer, `predictions`. Convolutions without an explicit padding use Keras's
default, 'valid'.
"""
import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn

from cnnjax.models import layers
from cnnjax.models.layers import ConvSpec, DropoutSpec, PoolSpec


@dataclasses.dataclass(frozen=True)
class Plan:
  stack: Tuple[Any, ...]
  hidden_units: Tuple[int, ...]
  batch_norm: bool = False  # the architecture's default for the `batch_norm` option


PLANS = {
    "simple_cnn": Plan(
        (ConvSpec(6, padding="same"), ConvSpec(16, padding="valid"), PoolSpec(),
         ConvSpec(16, padding="same"), ConvSpec(32, padding="valid"), PoolSpec()),
        hidden_units=(512,)),
    # BatchNorm after the second convolution only, as in the tutorial.
    "simple_cnn_bn": Plan(
        (ConvSpec(32, padding="same", batch_norm=False), ConvSpec(32, padding="valid"), PoolSpec(),
         ConvSpec(64, padding="same", batch_norm=False), ConvSpec(128, padding="valid", batch_norm=False),
         PoolSpec()),
        hidden_units=(512,), batch_norm=True),
    # 64x64 faces, smiling or not.
    "smile_cnn": Plan(
        (ConvSpec(16, 5), PoolSpec(), ConvSpec(32, 5), PoolSpec(), ConvSpec(64, 3), PoolSpec()),
        hidden_units=(128,), batch_norm=True),
    # 150x150 cats vs dogs (Chollet's "very little data" tutorial).
    "catdog_cnn": Plan(
        (ConvSpec(32, padding="valid"), PoolSpec(), ConvSpec(32, padding="valid"), PoolSpec(),
         ConvSpec(64, padding="valid"), PoolSpec(), DropoutSpec(0.25)),
        hidden_units=(64,)),
}


class SimpleCNN(layers.SequentialCNN):
  """One of the tutorial CNNs in `PLANS`, chosen by `arch`.

  batch_norm: None = the architecture's default; with BN each convolution is conv -> BN -> activation.
  conv_dropout: the rate of the dropout inside the conv stack (catdog_cnn only), None = the default 0.25.
  """
  arch: str = "simple_cnn"
  dropout: float = 0.5
  conv_dropout: Optional[float] = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.arch not in PLANS:
      raise ValueError(f"unknown simple CNN {self.arch!r}; choose one of {sorted(PLANS)}")
    plan = PLANS[self.arch]
    return layers.sequential_cnn(self, self.arch, images, train, plan.stack, plan.hidden_units,
                                 batch_norm_default=plan.batch_norm)
