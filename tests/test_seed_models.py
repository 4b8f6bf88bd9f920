"""The zoo as its seeds build it: each tutorial's model written as a Keras Sequential the way its source writes it,
compared with cnnjax's model of the same name layer by layer (kind, output shape, parameter count) and by
Keras's automatic layer names.

Sources: LeNet-5 and the cats-vs-dogs CNN as KDnuggets lists them; AlexNet and VGG16 as Bakshi uses them
(227x227 and 224x224, two classes); the CIFAR-10 tutorial CNNs (simple_cnn, simple_cnn_bn); Chollet's Keras blog
cats-vs-dogs CNN (catdog_cnn_chollet); the Packt smile detector, whose notebook
(PacktPublishing/Hands-On-Neural-Networks-with-Keras, Chapter04/Chapter_4_CNN_smile_detector.ipynb) prints the
`model.summary()` also checked here number by number. Where a source ends in a softmax or sigmoid Dense,
cnnjax's last layer is the linear `predictions` with the same parameters (named `predictions`, not `dense_N`).
"""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cnnjax import models  # noqa: E402
from cnnjax.models import introspect  # noqa: E402

keras = pytest.importorskip("keras", reason="keras is a test peer: pip install -r requirements-peers.txt")
L = keras.layers

# Keras layer class -> the cnnjax module that plays it.
KINDS = {"Conv2D": "Conv", "MaxPooling2D": "Pool", "AveragePooling2D": "Pool", "BatchNormalization": "BatchNorm",
         "Activation": "Activation", "Dropout": "Dropout", "Flatten": "Flatten", "Dense": "Dense"}


def conv(features, kernel=3, activation="relu", **kwargs):
  return L.Conv2D(features, kernel, activation=activation, **kwargs)


def same(features, kernel=3):
  return conv(features, kernel, padding="same")


def cifar_head():
  return [L.Flatten(), L.Dense(512, activation="relu"), L.Dropout(0.5), L.Dense(10, activation="softmax")]


def alexnet():
  # Built in order: Keras numbers its automatic names as the layers are made.
  stack = [conv(96, 11, strides=4), L.MaxPooling2D(3, 2), same(256, 5), L.MaxPooling2D(3, 2)]
  stack += [layer for features in (384, 384, 256) for layer in (same(features), L.Dropout(0.25))]
  stack += [L.MaxPooling2D(3, 2), L.Flatten()]
  stack += [layer for _ in range(3) for layer in (L.Dense(4096, activation="relu"), L.Dropout(0.25))]
  return stack + [L.Dense(2, activation="softmax")]


def catdog(padding, *before_flatten):
  """Both cats-vs-dogs CNNs up to their output layer."""
  stack = [layer for features in (32, 32, 64) for layer in (conv(features, padding=padding), L.MaxPooling2D())]
  return stack + list(before_flatten) + [L.Flatten(), L.Dense(64, activation="relu"), L.Dropout(0.5)]


def smile_detector():
  """The Packt notebook's cell, layer for layer."""
  return [same(16, 5), L.BatchNormalization(), L.MaxPooling2D(), L.Dropout(0.1),
          same(32, 5), L.BatchNormalization(), L.MaxPooling2D(), L.Dropout(0.1),
          L.Flatten(), L.Dense(128, activation="relu"), L.Dense(1, activation="sigmoid")]


# name: (input shape, classes, the source's layers after its Input, its Keras count_params()).
SEEDS = {
    "simple_cnn": ((32, 32, 3), 10, lambda: [same(6), conv(16), L.MaxPooling2D(), same(16), conv(32),
                                             L.MaxPooling2D(), *cifar_head()], 603_474),
    # BatchNorm after the second convolution only, between the linear conv and its ReLU.
    "simple_cnn_bn": ((32, 32, 3), 10, lambda: [same(32), conv(32, activation=None), L.BatchNormalization(),
                                                L.Activation("relu"), L.MaxPooling2D(), same(64), conv(128),
                                                L.MaxPooling2D(), *cifar_head()], 2_467_562),
    "lenet5": ((32, 32, 1), 10, lambda: [conv(6, 5, "tanh"), L.AveragePooling2D(2), conv(16, 5, "tanh"),
                                         L.AveragePooling2D(2), L.Flatten(), L.Dense(120, activation="tanh"),
                                         L.Dense(84, activation="tanh"), L.Dense(10, activation="softmax")],
               61_706),
    "alexnet": ((227, 227, 3), 2, alexnet, 75_070_850),
    "catdog_cnn": ((150, 150, 3), 2, lambda: catdog("same", L.Dropout(0.25)) + [L.Dense(2, activation="softmax")],
                   1_355_938),
    # The blog's separate Activation('relu') layers folded into the Conv2D/Dense before them (the same function).
    "catdog_cnn_chollet": ((150, 150, 3), 1, lambda: catdog("valid") + [L.Dense(1, activation="sigmoid")],
                           1_212_513),
    "smile_cnn": ((64, 64, 3), 1, smile_detector, 1_063_073),
}


def keras_model(layers, input_shape):
  """The Sequential of `layers()`, named as in a fresh Keras session (automatic names count from `conv2d`)."""
  keras.utils.clear_session()
  return keras.Sequential([keras.Input(input_shape), *layers()])


def keras_rows(model):
  """(name, cnnjax kind, output shape, count_params()) of each layer, as cnnjax_rows gives them."""
  return [(layer.name, KINDS[type(layer).__name__], tuple(layer.output.shape[1:]), layer.count_params())
          for layer in model.layers if not isinstance(layer, L.InputLayer)]  # a functional model lists its Input


def cnnjax_rows(model, input_shape):
  """(name, kind, output shape, parameters with BN statistics) of the model's own layers, in call order."""
  traced = introspect.trace(model, input_shape)
  trees = [traced.variables.get(collection, {}) for collection in ("params", "batch_stats")]
  rows = []
  for call in traced.calls:
    if len(call.path) == 1:
      name = call.path[0]
      leaves = jax.tree_util.tree_leaves([tree.get(name, {}) for tree in trees])
      rows.append((name, call.kind, call.shapes[0][1:], sum(int(np.prod(leaf.shape)) for leaf in leaves)))
  return rows


@pytest.mark.parametrize("name", SEEDS)
def test_each_seed_model_matches_its_source_layer_by_layer(name):
  input_shape, classes, layers, total = SEEDS[name]
  reference = keras_model(layers, input_shape)
  assert reference.count_params() == total
  expected = keras_rows(reference)
  expected[-1] = ("predictions", *expected[-1][1:])
  assert cnnjax_rows(models.create(name, num_classes=classes), input_shape) == expected


def test_vgg16_matches_keras_applications_as_bakshi_uses_it():
  reference = keras.applications.VGG16(weights=None, input_shape=(224, 224, 3), classes=2)
  assert reference.count_params() == 134_268_738
  assert cnnjax_rows(models.create("vgg16", num_classes=2), (224, 224, 3)) == keras_rows(reference)


def test_smile_cnn_has_the_chapter_summary_and_layer_shapes():
  rows = cnnjax_rows(models.create("smile_cnn", num_classes=1), (64, 64, 3))
  # The notebook's model.summary(): its 11 layers' parameters; 96 of its 1,063,073 are BN moving statistics.
  assert [count for *_, count in rows] == [1216, 64, 0, 0, 12832, 128, 0, 0, 0, 1_048_704, 129]
  # The chapter's layers 1, 4 and 8 (counted from 1), and the 16 x 16 x 32 = 8,192 it flattens.
  shapes = [shape for _, _, shape, _ in rows]
  assert (shapes[0], shapes[3], shapes[7], shapes[8]) == ((64, 64, 16), (32, 32, 16), (16, 16, 32), (8192,))
  # The config's two classes: two logits instead of one sigmoid unit, 129 more parameters.
  text = models.summary(models.create("smile_cnn", num_classes=2), (64, 64, 3), print_fn=lambda line: None)
  assert "Total params: 1,063,202" in text
