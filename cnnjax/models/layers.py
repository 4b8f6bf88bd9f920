"""Keras-shaped building blocks shared by every architecture.

Each layer is its own named module, so a Keras layer name (`block5_conv3`, `conv1_relu`, `predictions`)
is both the key of its parameters in `variables['params']` and a place whose output the explainers can
capture or differentiate with respect to. Like Keras, a `Conv`/`Dense` with an `activation` outputs the
activated value under its own name (Keras's `block5_conv3` is post-ReLU).

Convolutions and max pooling go through `xla_cpu`, which gives XLA:CPU its own kernels where a program is
lowered for CPU and plain lax elsewhere.

Every activation of a layer runs in the layer's Flax method `activate` (the `Activated` base), which code
outside the model can intercept with `nn.intercept_methods`: the explainers swap the gradient rule of the ReLUs
there (guided and rectified backprop, `cnnjax.explain.backprop`) and the models never know. Nothing here reads
a context: BatchNorm is Flax's own, normalising with batch statistics exactly when train=True, and fine-tuning
freezes chosen ones from outside too (`cnnjax.models.introspect.frozen_batch_norm`).

Below the layers is what the architectures share: option checks, the input-size check (a one-line error instead
of an empty feature map), and the builder of Keras-Sequential-like stacks (`sequential_cnn`).
"""
import collections
import dataclasses
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.models import xla_cpu

ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "tanh", "sigmoid", "linear")
RELU_CAPS = {"relu": None, "relu6": 6.0}  # the rectifiers, by the value that caps them


def clipped_relu(x, cap: Optional[float]):
  """max(x, 0), capped at `cap` unless it is None (ReLU6, as MobileNet uses)."""
  return jnp.clip(x, 0, cap) if cap is not None else jax.nn.relu(x)


def apply_activation(x, kind: Optional[str]):
  """Applies an activation named as Keras names it (None: none)."""
  if kind in (None, "linear"):
    return x
  if kind in RELU_CAPS:
    return clipped_relu(x, RELU_CAPS[kind])
  if kind == "leaky_relu":
    return jax.nn.leaky_relu(x, negative_slope=0.3)  # Keras LeakyReLU default slope
  if kind == "elu":
    return jax.nn.elu(x)
  if kind == "tanh":
    return jnp.tanh(x)
  if kind == "sigmoid":
    return jax.nn.sigmoid(x)
  raise ValueError(f"unknown activation {kind!r}; choose one of {ACTIVATIONS}")


class Activated(nn.Module):
  """Base of the layers that end in a named activation: `Conv`, `Dense`, `DepthwiseConv`, `Activation`.

  Flax wraps every method of a Module, so `nn.intercept_methods` sees each activation as a call of `activate`
  with `args == (inputs, kind)`: one place where an explainer can replace a ReLU's gradient rule, whatever the
  layer. The base declares no fields, so subclasses order theirs (required ones first) as they need.
  """

  def activate(self, inputs, kind: Optional[str]):
    """`apply_activation(inputs, kind)`, as a method so that it can be intercepted."""
    return apply_activation(inputs, kind)


Padding = xla_cpu.Padding  # 'SAME'/'VALID' (TensorFlow's) or explicit (before, after) pairs

# Keras's defaults, so that models trained here behave like the tutorials' models.
default_kernel_init = nn.initializers.glorot_uniform()


class Conv(Activated):
  """2-D convolution (HWIO kernel, optional bias) followed by an optional activation, as Keras Conv2D.

  `padding='SAME'` is TensorFlow's (extra pixel at the bottom/right for stride 2), like Keras.
  `feature_group_count=C` with `features=C * multiplier` makes it a depthwise convolution.
  """
  features: int
  kernel_size: Tuple[int, int] = (3, 3)
  strides: Tuple[int, int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  activation: Optional[str] = None
  feature_group_count: int = 1
  dtype: Any = None
  kernel_init: Callable = default_kernel_init

  @nn.compact
  def __call__(self, inputs):
    in_features = inputs.shape[-1]
    if in_features % self.feature_group_count:
      raise ValueError(f"{self.name}: {in_features} input channels are not divisible by "
                       f"feature_group_count={self.feature_group_count}")
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, in_features // self.feature_group_count, self.features))
    dtype = self.dtype or inputs.dtype
    padding = _hashable_padding(self.padding)
    inputs, kernel = inputs.astype(dtype), kernel.astype(dtype)
    outputs = xla_cpu.conv(inputs, kernel, self.strides, padding, self.feature_group_count)
    if self.use_bias:
      outputs = outputs + self.param("bias", nn.initializers.zeros, (self.features,)).astype(dtype)
    return self.activate(outputs, self.activation)


def _hashable_padding(padding: Padding) -> Padding:
  """'SAME'/'VALID' (any case, as Keras takes them), or explicit (before, after) pairs as a tuple of tuples (lists
  from a config are not hashable)."""
  return padding.upper() if isinstance(padding, str) else tuple(tuple(pair) for pair in padding)


class Dense(Activated):
  """Fully connected layer (kernel `(in, out)`, bias) followed by an optional activation, as Keras Dense."""
  features: int
  use_bias: bool = True
  activation: Optional[str] = None
  dtype: Any = None
  kernel_init: Callable = default_kernel_init

  @nn.compact
  def __call__(self, inputs):
    kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features))
    dtype = self.dtype or inputs.dtype
    outputs = inputs.astype(dtype) @ kernel.astype(dtype)
    if self.use_bias:
      outputs = outputs + self.param("bias", nn.initializers.zeros, (self.features,)).astype(dtype)
    return self.activate(outputs, self.activation)


class DepthwiseConv(Activated):
  """Keras DepthwiseConv2D: param `depthwise_kernel` of shape (kh, kw, C, depth_multiplier), no bias by default.

  Output channel `c * depth_multiplier + m` is input channel c filtered by `depthwise_kernel[..., c, m]`, the
  order Keras and TensorFlow use, so their weights load unchanged.
  """
  kernel_size: Tuple[int, int] = (3, 3)
  strides: Tuple[int, int] = (1, 1)
  padding: Padding = "SAME"
  depth_multiplier: int = 1
  use_bias: bool = False
  activation: Optional[str] = None
  dtype: Any = None
  kernel_init: Callable = default_kernel_init

  @nn.compact
  def __call__(self, inputs):
    channels = inputs.shape[-1]
    kernel = self.param("depthwise_kernel", self.kernel_init, (*self.kernel_size, channels, self.depth_multiplier))
    dtype = self.dtype or inputs.dtype
    padding = _hashable_padding(self.padding)
    outputs = lax.conv_general_dilated(
        inputs.astype(dtype), kernel.reshape(*self.kernel_size, 1, channels * self.depth_multiplier).astype(dtype),
        window_strides=self.strides, padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels)
    if self.use_bias:
      outputs = outputs + self.param("bias", nn.initializers.zeros,
                                     (channels * self.depth_multiplier,)).astype(dtype)
    return self.activate(outputs, self.activation)


class Add(nn.Module):
  """Keras Add: the sum of its inputs (a residual join such as `conv2_block1_add`)."""

  def __call__(self, *inputs):
    return sum(inputs[1:], inputs[0])


class Activation(Activated):
  """A stand-alone named activation (Keras `Activation`, e.g. ResNet50's `conv1_relu`, `conv2_block1_out`)."""
  kind: str = "relu"

  def __call__(self, inputs):
    return self.activate(inputs, self.kind)


class Pool(nn.Module):
  """Max or average pooling, as Keras MaxPooling2D / AveragePooling2D (strides default to the window)."""
  kind: str = "max"
  window: Tuple[int, int] = (2, 2)
  strides: Optional[Tuple[int, int]] = None
  padding: Padding = "VALID"

  def __call__(self, inputs):
    strides = self.strides or self.window
    padding = _hashable_padding(self.padding)
    if self.kind == "max":
      return xla_cpu.max_pooling(inputs, self.window, strides, padding)
    if self.kind == "average":
      # Keras averages over the valid pixels only at padded borders.
      return nn.avg_pool(inputs, self.window, strides, padding, count_include_pad=False)
    raise ValueError(f"unknown pooling {self.kind!r}; choose 'max' or 'average'")


class GlobalAveragePool(nn.Module):
  """Keras GlobalAveragePooling2D (`keepdims=True` keeps a 1x1 map, as MobileNet's head needs)."""
  keepdims: bool = False

  def __call__(self, inputs):
    return jnp.mean(inputs, axis=(1, 2), keepdims=self.keepdims)


class Flatten(nn.Module):
  """Flattens in channels-last (H, W, C) order, as Keras Flatten does for NHWC inputs."""

  def __call__(self, inputs):
    return inputs.reshape((inputs.shape[0], -1))


def batch_norm(train: bool, *, name: str, epsilon: float = 1e-3, axis_name: Optional[str] = None,
               dtype: Any = None) -> nn.BatchNorm:
  """Keras-style BatchNormalization (momentum 0.99, epsilon 1e-3 unless given), to be called on inputs.

  Parameters are `params/<name>/{scale,bias}`, statistics `batch_stats/<name>/{mean,var}`. With `axis_name`,
  training statistics are averaged over that mapped axis (synchronous BatchNorm under `pmap`); under `jit`
  with a sharded batch the mean is already global. Parameters and statistics stay float32 under bfloat16.
  It normalises with the moving statistics when not training, or when frozen from outside
  (`cnnjax.models.introspect.frozen_batch_norm`).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=epsilon,
                      axis_name=axis_name, dtype=dtype, param_dtype=jnp.float32, name=name)


def dropout(rate: float, train: bool, *, name: Optional[str] = None) -> nn.Dropout:
  """Keras Dropout; draws from the 'dropout' RNG stream only when training."""
  return nn.Dropout(rate, deterministic=not train or rate == 0, name=name)


# ---------------------------------------------------------------------------------------------------------------
# Option checks shared by every architecture.

POOLINGS = ("max", "average")
HEADS = ("flatten", "gap")


def compute_dtype(dtype: Any) -> Optional[jnp.dtype]:
  """The compute dtype a model runs in: None (float32) or a floating dtype given by name or as a dtype."""
  if dtype is None:
    return None
  try:
    resolved = jnp.dtype(dtype)
  except TypeError:
    resolved = None
  if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
    raise ValueError(f"dtype={dtype!r} is not a floating dtype; use None (float32), 'bfloat16' or 'float16'")
  return resolved


def _is_rate(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


_OPTION_CHECKS = {
    "num_classes": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "use a positive integer"),
    "activation": (lambda v: v in ACTIVATIONS, f"choose one of {ACTIVATIONS}"),
    "pooling": (lambda v: v in POOLINGS, f"choose one of {POOLINGS}"),
    "head": (lambda v: v in HEADS, f"choose one of {HEADS}"),
    "dropout": (_is_rate, "use a rate in [0, 1)"),
    "conv_dropout": (lambda v: v is None or _is_rate(v), "use a rate in [0, 1), or None for the default"),
    "batch_norm": (lambda v: v is None or isinstance(v, bool), "use True or False"),
    "stride_on_3x3": (lambda v: isinstance(v, bool), "use True or False"),
    "alpha": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
              "use a width multiplier > 0 such as 0.25"),
}


def check_options(model: nn.Module, arch: str) -> None:
  """Raises a one-line ValueError naming the first option of `model` that has an unusable value.

  None is also valid where the model's own default is None: there it stands for the architecture's default
  (SimpleCNN's `dropout`, which its plan gives).
  """
  defaults = {field.name: field.default for field in dataclasses.fields(model)}
  for field, (valid, advice) in _OPTION_CHECKS.items():
    if not hasattr(model, field):
      continue
    value = getattr(model, field)
    if value is None and defaults.get(field) is None:
      continue
    if not valid(value):
      raise ValueError(f"{arch}: {field}={value!r} is invalid; {advice}")
  compute_dtype(getattr(model, "dtype", None))


def model_inputs(images, dtype: Optional[jnp.dtype]):
  """Images as the compute dtype (float32 unless given), after checking they are an NHWC batch."""
  if getattr(images, "ndim", None) != 4:
    raise ValueError(f"expected a batch of images (N, H, W, C), got shape {getattr(images, 'shape', None)}")
  return jnp.asarray(images, dtype or jnp.float32)


# ---------------------------------------------------------------------------------------------------------------
# Input size: an input too small for an architecture fails with a one-line message, not with an empty feature map.

SpatialOp = Tuple[Tuple[int, int], Tuple[int, int], Padding]  # (window, strides, padding) of a conv or pool


def _min_input_extent(needed_out: int, window: int, stride: int, padding) -> int:
  if isinstance(padding, str):
    reach = 1 if padding.upper() == "SAME" else window
    return (needed_out - 1) * stride + reach
  low, high = padding
  return max((needed_out - 1) * stride + window - low - high, 1)


def min_input_size(ops: Sequence[SpatialOp]) -> Tuple[int, int]:
  """Smallest (H, W) for which a chain of convolutions and pools leaves at least a 1x1 feature map."""
  needed = [1, 1]
  for window, strides, padding in reversed(ops):
    for axis in range(2):
      axis_padding = padding if isinstance(padding, str) else padding[axis]
      needed[axis] = _min_input_extent(needed[axis], window[axis], strides[axis], axis_padding)
  return needed[0], needed[1]


def check_input_size(images, arch: str, ops: Sequence[SpatialOp]) -> None:
  height, width = images.shape[1:3]
  min_height, min_width = min_input_size(ops)
  if height < min_height or width < min_width:
    raise ValueError(f"input {height}x{width} is too small for {arch}: its convolutions and pools need at least "
                     f"{min_height}x{min_width} pixels; resize the images or pick another model")


def spatial_ops(layer_list: Sequence[nn.Module]) -> list:
  """The (window, strides, padding) of each conv and pool of a sequential stack, up to its Flatten/GAP."""
  ops = []
  for layer in layer_list:
    if isinstance(layer, (Flatten, GlobalAveragePool)):
      break
    if isinstance(layer, (Conv, DepthwiseConv)):
      ops.append((layer.kernel_size, layer.strides, layer.padding))
    elif isinstance(layer, Pool):
      ops.append((layer.window, layer.strides or layer.window, layer.padding))
  return ops


# ---------------------------------------------------------------------------------------------------------------
# Sequential CNNs (the tutorial models, LeNet, AlexNet, VGG): a conv stack described as data, then a head.


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """A convolution of a stack; `batch_norm=False` keeps it without BatchNorm even when the model uses BN.

  `batch_norm_after_activation`: BN normalises the activated output, as a Keras stack that writes
  `Conv2D(activation='relu')` then `BatchNormalization()` does (the Packt smile detector), instead of
  conv -> BN -> activation.
  """
  features: int
  kernel: int = 3
  strides: int = 1
  padding: Padding = "SAME"
  name: Optional[str] = None
  batch_norm: bool = True
  batch_norm_after_activation: bool = False


@dataclasses.dataclass(frozen=True)
class PoolSpec:
  """A pooling layer of a stack; its kind (max/average) is the model's `pooling` option."""
  window: int = 2
  strides: Optional[int] = None
  padding: Padding = "VALID"
  name: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class DropoutSpec:
  rate: float
  name: Optional[str] = None


class KerasNames:
  """Keras's automatic layer names (`conv2d`, `conv2d_1`, `dense`, ...); an explicit name is kept as given."""

  def __init__(self):
    self._counts = collections.Counter()

  def __call__(self, prefix: str, name: Optional[str] = None) -> str:
    if name is not None:
      return name
    index = self._counts[prefix]
    self._counts[prefix] += 1
    return prefix if index == 0 else f"{prefix}_{index}"


def conv_stack(specs, *, names: KerasNames, train: bool, activation: str, use_batch_norm: bool, pooling: str,
               conv_dropout: Optional[float] = None, axis_name: Optional[str] = None, dtype: Any = None) -> list:
  """Layers for `specs`. Without BN a conv carries its activation (Keras `Conv2D(activation=...)`); with BN it is
  conv -> BN -> activation, named `<conv>_bn`, `<conv>_relu` beside a named conv (else Keras's automatic names),
  or conv with its activation -> BN for a spec with `batch_norm_after_activation`.
  `conv_dropout`, when given, replaces the rate of every dropout in the stack."""
  stack = []
  for spec in specs:
    if isinstance(spec, PoolSpec):
      prefix = "max_pooling2d" if pooling == "max" else "average_pooling2d"
      strides = None if spec.strides is None else (spec.strides,) * 2
      stack.append(Pool(pooling, (spec.window,) * 2, strides, spec.padding, name=names(prefix, spec.name)))
    elif isinstance(spec, DropoutSpec):
      rate = spec.rate if conv_dropout is None else conv_dropout
      if rate:
        stack.append(dropout(rate, train, name=names("dropout", spec.name)))
    else:
      normalized = use_batch_norm and spec.batch_norm
      activation_after_bn = normalized and not spec.batch_norm_after_activation
      stack.append(Conv(spec.features, (spec.kernel,) * 2, (spec.strides,) * 2, spec.padding,
                        activation=None if activation_after_bn else activation, dtype=dtype,
                        name=names("conv2d", spec.name)))
      if normalized:
        bn_name, act_name = (None, None) if spec.name is None else (f"{spec.name}_bn", f"{spec.name}_relu")
        stack.append(batch_norm(train, name=names("batch_normalization", bn_name), axis_name=axis_name,
                                dtype=dtype))
        if activation_after_bn:
          stack.append(Activation(activation, name=names("activation", act_name)))
  return stack


def classifier_head(kind: str, hidden_units: Sequence[int], *, num_classes: int, names: KerasNames, train: bool,
                    activation: str, dropout_rate: float, hidden_names: Optional[Sequence[str]] = None,
                    dtype: Any = None) -> list:
  """'flatten': Flatten - (Dense - Dropout) per hidden layer - predictions, as the tutorials;
  'gap': GlobalAveragePooling - predictions. The last layer is always the linear `predictions` (logits)."""
  if kind == "gap":
    head = [GlobalAveragePool(name=names("global_average_pooling2d"))]
  else:
    head = [Flatten(name=names("flatten"))]
    for index, units in enumerate(hidden_units):
      head.append(Dense(units, activation=activation, dtype=dtype,
                        name=names("dense", hidden_names[index] if hidden_names else None)))
      if dropout_rate:
        head.append(dropout(dropout_rate, train, name=names("dropout")))
  head.append(Dense(num_classes, dtype=dtype, name="predictions"))
  return head


class SequentialCNN(nn.Module):
  """The options every conv-stack + dense-head architecture takes; subclasses set their own defaults and call
  `sequential_cnn` from `__call__`. batch_norm: None = the architecture's default."""
  num_classes: int
  activation: str = "relu"
  pooling: str = "max"
  head: str = "flatten"
  dropout: float = 0.0
  batch_norm: Optional[bool] = None
  axis_name: Optional[str] = None
  dtype: Any = None


def sequential_cnn(model: nn.Module, arch: str, images, train: bool, specs, hidden_units: Sequence[int], *,
                   batch_norm_default: bool = False, dropout_default: float = 0.0,
                   hidden_names: Optional[Sequence[str]] = None):
  """Builds (inside `model`'s compact `__call__`) and runs `specs` + head from the model's options.

  `model` provides num_classes, activation, pooling, head, dropout (None = `dropout_default`), dtype, axis_name
  and optionally batch_norm (None = `batch_norm_default`) and conv_dropout. Returns float32 logits.
  """
  check_options(model, arch)
  dtype = compute_dtype(model.dtype)
  inputs = model_inputs(images, dtype)
  names = KerasNames()
  wants_batch_norm = getattr(model, "batch_norm", None)
  use_batch_norm = batch_norm_default if wants_batch_norm is None else wants_batch_norm
  stack = conv_stack(specs, names=names, train=train, activation=model.activation, use_batch_norm=use_batch_norm,
                     pooling=model.pooling, conv_dropout=getattr(model, "conv_dropout", None),
                     axis_name=model.axis_name, dtype=dtype)
  dropout_rate = dropout_default if model.dropout is None else model.dropout
  stack += classifier_head(model.head, hidden_units, num_classes=model.num_classes, names=names, train=train,
                           activation=model.activation, dropout_rate=dropout_rate, hidden_names=hidden_names,
                           dtype=dtype)
  check_input_size(inputs, arch, spatial_ops(stack))
  outputs = inputs
  for layer in stack:
    outputs = layer(outputs)
  return outputs.astype(jnp.float32)
