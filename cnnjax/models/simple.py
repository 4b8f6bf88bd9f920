"""The small tutorial CNNs (CIFAR-10, smile detection, cats vs dogs) as Keras Sequential models.

Layer names are Keras's automatic ones (`conv2d`, `conv2d_1`, `max_pooling2d`, `batch_normalization`, `dense`,
`dropout`, ...), except the last layer, `predictions`: the logits of the tutorials' softmax layer, with the same
parameters. Convolutions without an explicit padding use Keras's default, 'valid'. tests/test_seed_models.py
builds each tutorial's own Keras model and compares it with these layer by layer.
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
  dropout: float = 0.5  # ... and for `dropout`, the rate after each hidden Dense


def _catdog_stack(padding: str) -> Tuple[Any, ...]:
  """Both cats-vs-dogs CNNs: Conv32 - Pool - Conv32 - Pool - Conv64 - Pool, differing in padding only."""
  return tuple(spec for features in (32, 32, 64) for spec in (ConvSpec(features, padding=padding), PoolSpec()))


# The Packt chapter writes Conv2D(activation='relu') then BatchNormalization: BN normalises the ReLU's output.
_SMILE_CONV = {"kernel": 5, "padding": "same", "batch_norm_after_activation": True}

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
    # 64x64 faces, smiling or not: the Packt chapter's model (its notebook's model.summary(): 1,063,073
    # parameters with its single sigmoid unit, here `num_classes` logits). Its layers 1, 4 and 8 (conv2d, dropout,
    # dropout_1) hold 16 maps of 64x64, 16 of 32x32 and 32 of 16x16; Flatten gives 16 * 16 * 32 = 8,192. No
    # dropout after its Dense 128. The chapter's text fixes layer 1 and those shapes; the second block (5x5 'same'
    # Conv 32 + BN, 2x2 pooling, Dropout 0.1) is its notebook's, the only build with those shapes and that count.
    # Left open, the output: `num_classes` logits under softmax cross-entropy rather than one sigmoid unit, so the
    # loss, the metrics and every explainer's class target work as for the other models (a sigmoid of z is a
    # softmax over (0, z): the same family of classifiers).
    "smile_cnn": Plan(
        (ConvSpec(16, **_SMILE_CONV), PoolSpec(), DropoutSpec(0.1),
         ConvSpec(32, **_SMILE_CONV), PoolSpec(), DropoutSpec(0.1)),
        hidden_units=(128,), batch_norm=True, dropout=0.0),
    # 150x150 cats vs dogs, the KDnuggets tutorial's: 'same' padding, 1,355,938 parameters for 2 classes.
    "catdog_cnn": Plan(_catdog_stack("same") + (DropoutSpec(0.25),), hidden_units=(64,)),
    # Chollet's Keras blog model ("very little data"): 'valid' padding, no dropout before Flatten; 1,212,578
    # parameters for 2 classes (the blog's single sigmoid output has 1,212,513).
    "catdog_cnn_chollet": Plan(_catdog_stack("valid"), hidden_units=(64,)),
}


class SimpleCNN(layers.SequentialCNN):
  """One of the tutorial CNNs in `PLANS`, chosen by `arch`.

  batch_norm: None = the architecture's default; with BN each convolution is conv -> BN -> activation (smile_cnn:
  conv with its activation -> BN, as its chapter).
  dropout: the rate after each hidden Dense; None = the architecture's (0.5; smile_cnn 0, as its chapter).
  conv_dropout: the rate of every dropout inside the conv stack (catdog_cnn 0.25, smile_cnn 0.1), None = those.
  """
  arch: str = "simple_cnn"
  dropout: Optional[float] = None
  conv_dropout: Optional[float] = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.arch not in PLANS:
      raise ValueError(f"unknown simple CNN {self.arch!r}; choose one of {sorted(PLANS)}")
    plan = PLANS[self.arch]
    return layers.sequential_cnn(self, self.arch, images, train, plan.stack, plan.hidden_units,
                                 batch_norm_default=plan.batch_norm, dropout_default=plan.dropout)
