"""Keras 3 twins of the cnnjax architectures the training benchmark runs (KERAS_BACKEND=jax is set by run.py
before keras is imported). Same layer plans and trainable-parameter counts as cnnjax and bench/peers_torch.py;
ResNet50 is built here as v1.5 (stride on the 3x3, like torchvision and cnnjax's stride_on_3x3=True) with conv
biases (Keras applications' layout), since keras.applications.ResNet50 is v1.
"""
import keras
from keras import layers, ops


def simple_cnn(num_classes: int = 10, image_size: int = 32) -> keras.Model:
  return keras.Sequential([
      keras.Input((image_size, image_size, 3)),
      layers.Conv2D(6, 3, padding="same", activation="relu"), layers.Conv2D(16, 3, activation="relu"),
      layers.MaxPooling2D(),
      layers.Conv2D(16, 3, padding="same", activation="relu"), layers.Conv2D(32, 3, activation="relu"),
      layers.MaxPooling2D(),
      layers.Flatten(), layers.Dense(512, activation="relu"), layers.Dropout(0.5), layers.Dense(num_classes)])


def _conv_bn(x, filters, kernel, strides=1, use_bias=True, epsilon=1e-3):
  """Conv (symmetric padding kernel // 2, as cnnjax's explicit paddings) then BatchNorm."""
  if kernel > 1:
    x = layers.ZeroPadding2D(kernel // 2)(x)
  x = layers.Conv2D(filters, kernel, strides, use_bias=use_bias)(x)
  return layers.BatchNormalization(momentum=0.99, epsilon=epsilon)(x)


def vgg16(num_classes: int = 10, image_size: int = 32) -> keras.Model:
  inputs = x = keras.Input((image_size, image_size, 3))
  for convs, width in zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)):
    for _ in range(convs):
      x = layers.ReLU()(_conv_bn(x, width, 3))
    x = layers.MaxPooling2D()(x)
  x = layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, layers.Dense(num_classes)(x))


def _zero_pad_shortcut(x, features):
  extra = features - x.shape[-1]
  return layers.Lambda(lambda t: ops.pad(t[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0),
                                                             (extra // 2, extra - extra // 2))))(x)


def resnet20(num_classes: int = 10, image_size: int = 32) -> keras.Model:
  inputs = keras.Input((image_size, image_size, 3))
  x = layers.ReLU()(_conv_bn(inputs, 16, 3, use_bias=False, epsilon=1e-5))
  for stage, width in enumerate((16, 32, 64)):
    for index in range(3):
      strides = 2 if stage and not index else 1
      shortcut = _zero_pad_shortcut(x, width) if strides == 2 else x
      y = layers.ReLU()(_conv_bn(x, width, 3, strides, use_bias=False, epsilon=1e-5))
      y = _conv_bn(y, width, 3, use_bias=False, epsilon=1e-5)
      x = layers.ReLU()(layers.Add()([shortcut, y]))
  x = layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, layers.Dense(num_classes)(x))


def resnet50(num_classes: int = 1000, image_size: int = 224) -> keras.Model:
  inputs = keras.Input((image_size, image_size, 3))
  x = layers.Conv2D(64, 7, 2)(layers.ZeroPadding2D(3)(inputs))
  x = layers.ReLU()(layers.BatchNormalization(momentum=0.99, epsilon=1.001e-5)(x))
  x = layers.MaxPooling2D(3, 2)(layers.ZeroPadding2D(1)(x))
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    for index in range(blocks):
      strides = 2 if stage and not index else 1
      shortcut = _conv_bn(x, width * 4, 1, strides, epsilon=1.001e-5) if index == 0 else x
      y = layers.ReLU()(_conv_bn(x, width, 1, epsilon=1.001e-5))
      y = layers.ReLU()(_conv_bn(y, width, 3, strides, epsilon=1.001e-5))
      y = _conv_bn(y, width * 4, 1, epsilon=1.001e-5)
      x = layers.ReLU()(layers.Add()([shortcut, y]))
  x = layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, layers.Dense(num_classes)(x))


BUILDERS = {"simple_cnn": simple_cnn, "vgg16": vgg16, "resnet20": resnet20, "resnet50": resnet50}


def trainable_count(model: keras.Model) -> int:
  return sum(int(ops.size(w)) for w in model.trainable_weights)
