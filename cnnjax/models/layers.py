"""Keras-shaped building blocks shared by every architecture.

Each layer is its own named module, so a Keras layer name (`block5_conv3`, `conv1_relu`, `predictions`)
is both the key of its parameters in `variables['params']` and a place whose output the explainers can
capture or differentiate with respect to. Like Keras, a `Conv`/`Dense` with an `activation` outputs the
activated value under its own name (Keras's `block5_conv3` is post-ReLU).

Every ReLU goes through `activate`, which consults `backprop_modifier` while a function is being traced:
guided and rectified backprop are chosen per explainer call, without rewriting any model.

Below the layers is what the architectures share: option checks, the input-size check (a one-line error instead
of an empty feature map), and the builder of Keras-Sequential-like stacks (`sequential_cnn`).
"""
import contextlib
import contextvars
import collections
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "tanh", "sigmoid", "linear")
BACKPROP_MODIFIERS = (None, "guided", "relu")

_backprop_modifier = contextvars.ContextVar("cnnjax_backprop_modifier", default=None)
_frozen_batch_norms = contextvars.ContextVar("cnnjax_frozen_batch_norms", default=frozenset())


@contextlib.contextmanager
def backprop_modifier(modifier: Optional[str]):
  """Within this context, ReLUs traced into a computation backpropagate with `modifier`.

  None: the true gradient. 'guided' (Springenberg et al. 2015): the gradient passes only where the forward
  input and the incoming gradient are both positive. 'relu' (rectified / deconvnet, Zeiler & Fergus 2014):
  only positive incoming gradients pass, whatever the forward input. The context must enclose the tracing of
  the function (e.g. the body of a jitted explainer); it does not affect already-compiled functions.
  """
  if modifier not in BACKPROP_MODIFIERS:
    raise ValueError(f"unknown backprop modifier {modifier!r}; choose one of {BACKPROP_MODIFIERS}")
  token = _backprop_modifier.set(modifier)
  try:
    yield
  finally:
    _backprop_modifier.reset(token)


@contextlib.contextmanager
def frozen_batch_norm(names: Sequence[str]):
  """Within this context, the BatchNorm layers called `names` normalise with their moving statistics even when
  the model is applied with train=True, as Keras runs a layer with `trainable = False` (since Keras 2.1.3).

  Fine-tuning needs this: a frozen backbone normalising with the statistics of small new-domain batches feeds
  the head features unlike those it will see at inference. Like `backprop_modifier`, it acts while tracing.
  """
  token = _frozen_batch_norms.set(frozenset(names))
  try:
    yield
  finally:
    _frozen_batch_norms.reset(token)


def uses_moving_statistics(train: bool, name: str) -> bool:
  """Whether the BatchNorm layer `name` normalises with its moving statistics (see `frozen_batch_norm`)."""
  return not train or name in _frozen_batch_norms.get()


def _clipped_relu(x, cap):
  return jnp.clip(x, 0, cap) if cap is not None else jax.nn.relu(x)


def _make_modified_relu(modifier: str, cap: Optional[float]):
  @jax.custom_vjp
  def modified_relu(x):
    return _clipped_relu(x, cap)

  def forward(x):
    return _clipped_relu(x, cap), x

  def backward(x, cotangent):
    passes = cotangent > 0
    if modifier == "guided":
      passes &= x > 0
      if cap is not None:
        passes &= x < cap
    return (jnp.where(passes, cotangent, 0).astype(cotangent.dtype),)

  modified_relu.defvjp(forward, backward)
  return modified_relu


_MODIFIED_RELUS = {(m, cap): _make_modified_relu(m, cap)
                   for m in ("guided", "relu") for cap in (None, 6.0)}


def activate(x, kind: Optional[str]):
  """Applies a named activation; ReLU and ReLU6 honour the active `backprop_modifier`."""
  if kind in (None, "linear"):
    return x
  if kind in ("relu", "relu6"):
    cap = 6.0 if kind == "relu6" else None
    modifier = _backprop_modifier.get()
    if modifier is None:
      return _clipped_relu(x, cap)
    return _MODIFIED_RELUS[(modifier, cap)](x)
  if kind == "leaky_relu":
    return jax.nn.leaky_relu(x, negative_slope=0.3)  # Keras LeakyReLU default slope
  if kind == "elu":
    return jax.nn.elu(x)
  if kind == "tanh":
    return jnp.tanh(x)
  if kind == "sigmoid":
    return jax.nn.sigmoid(x)
  raise ValueError(f"unknown activation {kind!r}; choose one of {ACTIVATIONS}")


def check_activation(kind: Optional[str]) -> None:
  if kind not in ACTIVATIONS and kind is not None:
    raise ValueError(f"unknown activation {kind!r}; choose one of {ACTIVATIONS}")


Padding = Union[str, Sequence[Tuple[int, int]]]

# Keras's defaults, so that models trained here behave like the tutorials' models.
default_kernel_init = nn.initializers.glorot_uniform()


class Conv(nn.Module):
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
    if self.feature_group_count == 1 and xla_swaps_conv_operands(inputs.shape[1:3], self.kernel_size):
      outputs = conv_as_matmul(inputs, kernel, self.strides, padding)
    elif self.feature_group_count == 1 and uses_col2im_input_gradient(self.strides, self.kernel_size):
      outputs = strided_conv(inputs, kernel, tuple(self.strides), padding)
    else:
      outputs = lax.conv_general_dilated(
          inputs, kernel, window_strides=self.strides, padding=padding,
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.feature_group_count)
    if self.use_bias:
      outputs = outputs + self.param("bias", nn.initializers.zeros, (self.features,)).astype(dtype)
    return activate(outputs, self.activation)


def xla_swaps_conv_operands(spatial: Sequence[int], kernel_size: Sequence[int]) -> bool:
  """Whether XLA's ConvOperandSwapper will make the image the kernel: when the kernel window holds more pixels
  than the feature map (a 3x3 conv on VGG16's 2x2 block5 maps at 32px input, on ResNet50's 1x1 stage-5 maps
  at 32px). XLA:CPU runs that swapped convolution, and the input gradient of such a layer, in a naive loop,
  30-60x slower than the same FLOPs as a matmul (bench/RESULTS.md)."""
  return kernel_size[0] * kernel_size[1] > spatial[0] * spatial[1]


def conv_as_matmul(inputs, kernel, strides: Sequence[int], padding: Padding):
  """`lax.conv_general_dilated` (NHWC, HWIO, no dilation or groups) as im2col + one matmul: the (N, H', W',
  kh*kw*C) patches times the kernel reshaped to (kh*kw*C, O). Cheap on the small maps it is used for; its
  gradients are matmuls, pads and slices too."""
  window = kernel.shape[:2]
  padded, _, out_shape = _pad_for_windows(inputs, window, strides, padding, 0)
  if min(out_shape) < 1:  # the window does not fit: an empty map, as lax returns
    return jnp.zeros((inputs.shape[0], *(max(size, 0) for size in out_shape), kernel.shape[-1]), inputs.dtype)
  patches = jnp.concatenate(window_slices(padded, window, strides, out_shape), axis=-1)
  return patches @ kernel.reshape(-1, kernel.shape[-1])


def _hashable_padding(padding: Padding) -> Padding:
  """'SAME'/'VALID' (any case, as Keras takes them), or explicit (before, after) pairs as a tuple of tuples (lists
  from a config are not hashable)."""
  return padding.upper() if isinstance(padding, str) else tuple(tuple(pair) for pair in padding)


def _window_geometry(spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Padding):
  """((before, after) pads per spatial axis, the output (H', W')) of a windowed op on an (H, W) map."""
  padding = _hashable_padding(padding)
  pads = tuple(lax.padtype_to_pads(spatial, window, strides, padding)) if isinstance(padding, str) else padding
  out_shape = tuple((spatial[axis] + sum(pads[axis]) - window[axis]) // strides[axis] + 1 for axis in range(2))
  return pads, out_shape


def _pad_for_windows(inputs, window: Sequence[int], strides: Sequence[int], padding: Padding, value):
  """(NHWC inputs padded with `value` as `padding` asks, the (before, after) pads, the output (H', W'))."""
  pads, out_shape = _window_geometry(inputs.shape[1:3], window, strides, padding)
  padded = jnp.pad(inputs, ((0, 0), *pads, (0, 0)), constant_values=value)
  return padded, pads, out_shape


def window_slices(padded, window: Sequence[int], strides: Sequence[int], out_shape: Sequence[int]) -> list:
  """The kh*kw strided views of a padded NHWC map, in row-major window order: view (i, j) holds pixel (i, j)
  of every window, so elementwise work over the views is work over each window."""
  return [padded[:, i:i + (out_shape[0] - 1) * strides[0] + 1:strides[0],
                 j:j + (out_shape[1] - 1) * strides[1] + 1:strides[1]]
          for i in range(window[0]) for j in range(window[1])]


def _summed_window_slices_transpose(views: Sequence, window: Sequence[int], strides: Sequence[int], padding: Padding,
                                    input_shape: Sequence[int]):
  """The transpose of `window_slices` (after `_pad_for_windows`): each view's values added back at the pixels it
  was sliced from, summed, and the padding cropped. Pads with interior padding, which XLA fuses into one pass."""
  pads, out_shape = _window_geometry(input_shape[1:3], window, strides, padding)
  padded_shape = [size + sum(pad) for size, pad in zip(input_shape[1:3], pads)]
  zero = jnp.zeros((), views[0].dtype)
  total = jnp.zeros((input_shape[0], *padded_shape, views[0].shape[-1]), views[0].dtype)
  for offset, view in enumerate(views):
    row, col = divmod(offset, window[1])
    total = total + lax.pad(view, zero, [
        (0, 0, 0),
        (row, padded_shape[0] - row - (out_shape[0] - 1) * strides[0] - 1, strides[0] - 1),
        (col, padded_shape[1] - col - (out_shape[1] - 1) * strides[1] - 1, strides[1] - 1),
        (0, 0, 0)])
  return total[:, pads[0][0]:pads[0][0] + input_shape[1], pads[1][0]:pads[1][0] + input_shape[2]]


# Above this many taps col2im's strided adds cost more than XLA's own input gradient (AlexNet's 11x11/4 stem
# 0.72x; ResNet50's 7x7/2 stem 1.37x faster; bench/strided_conv.py).
_COL2IM_MAX_TAPS = 49


def uses_col2im_input_gradient(strides: Sequence[int], kernel_size: Sequence[int]) -> bool:
  """Whether a convolution's input gradient is taken by `strided_conv`'s col2im rather than by JAX's rule."""
  return max(strides) > 1 and kernel_size[0] * kernel_size[1] <= _COL2IM_MAX_TAPS


def _lax_conv(inputs, kernel, strides, padding):
  return lax.conv_general_dilated(inputs, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def strided_conv(inputs, kernel, strides: Tuple[int, int], padding: Padding):
  """`lax.conv_general_dilated` (NHWC, HWIO, no groups) whose input gradient is col2im: one matmul of the output
  gradient with the transposed kernel gives every window's patch gradient, added back at the pixels the window
  covered. JAX differentiates a strided convolution as a convolution over the output gradient dilated by the
  stride, which XLA:CPU computes over all the inserted zeros: 1.4-3.2x the forward's time on ResNet's strided
  layers (5.1x on ResNet50's stem), against 1.1-1.4x (3.7x) this way (bench/strided_conv.py). The kernel
  gradient is JAX's own."""
  return _lax_conv(inputs, kernel, strides, padding)


def _strided_conv_forward(inputs, kernel, strides, padding):
  return _lax_conv(inputs, kernel, strides, padding), (inputs, kernel)


def _strided_conv_backward(strides, padding, residuals, cotangents):
  inputs, kernel = residuals
  (kernel_gradient,) = jax.vjp(lambda kernel: _lax_conv(inputs, kernel, strides, padding), kernel)[1](cotangents)
  window, channels = kernel.shape[:2], kernel.shape[2]
  patch_gradients = cotangents @ kernel.reshape(-1, kernel.shape[-1]).T  # (N, H', W', kh * kw * C), row-major taps
  views = [patch_gradients[..., tap * channels:(tap + 1) * channels] for tap in range(window[0] * window[1])]
  return _summed_window_slices_transpose(views, window, strides, padding, inputs.shape), kernel_gradient


strided_conv.defvjp(_strided_conv_forward, _strided_conv_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(inputs, window: Tuple[int, int], strides: Tuple[int, int], padding: Padding):
  """NHWC max pooling whose gradient goes to each window's first maximum in row-major order, as TensorFlow's
  MaxPoolGrad. The forward is elementwise over the window's strided views and also keeps each window's argmax
  offset; the backward spreads the cotangent by those offsets (pads of strided slices, fused by XLA).
  JAX's own max-pool gradient is an argmax reduce-window over four full-size index arrays and a scatter, which
  XLA:CPU ran in about half of simple_cnn's training step (bench/RESULTS.md)."""
  return _max_pool_forward(inputs, window, strides, padding)[0]


def _max_pool_forward(inputs, window, strides, padding):
  padded, _, out_shape = _pad_for_windows(inputs, window, strides, padding, -jnp.inf)
  views = window_slices(padded, window, strides, out_shape)
  # One pass keeps each window's maximum and the offset of its first occurrence; the backward routes by that
  # offset, so it never compares recomputed values (another fusion may round them differently).
  pooled, first = views[0], jnp.zeros(views[0].shape, jnp.int8 if len(views) < 128 else jnp.int32)
  for offset, view in enumerate(views[1:], start=1):
    later_max = (view > pooled) | jnp.isnan(view)  # NaN wins, as lax's max propagates it
    pooled, first = jnp.where(later_max, view, pooled), jnp.where(later_max, offset, first)
  return pooled, (first, inputs.shape)


def _max_pool_backward(window, strides, padding, residuals, cotangents):
  first, input_shape = residuals
  views = [jnp.where(first == offset, cotangents, 0) for offset in range(window[0] * window[1])]
  return (_summed_window_slices_transpose(views, window, strides, padding, input_shape),)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def materialized(values):
  """`values`, computed once. XLA:CPU's fusion copies cheap elementwise producers into every consumer it can fuse
  with, including the layout copies that feed kernel-gradient convolutions; through a chain of residual blocks that
  recomputes every earlier block of the chain per copy, quadratic in depth (resnet20's training step ran 1.2-1.6x
  slower, bench/RESULTS.md). XLA never duplicates a floating-point divide, so dividing by a one it cannot fold
  (built from a runtime value; exactly 1 for any value) makes the division, and so `values`, one buffer."""
  if values.size == 0:
    return values
  probe = lax.stop_gradient(values[(0,) * values.ndim])
  one = jnp.where(jnp.isfinite(probe), probe * 0 + 1, 1).astype(values.dtype)
  return values / one


class Dense(nn.Module):
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
    return activate(outputs, self.activation)


class DepthwiseConv(nn.Module):
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
    return activate(outputs, self.activation)


class Add(nn.Module):
  """Keras Add: the sum of its inputs (a residual join such as `conv2_block1_add`)."""

  def __call__(self, *inputs):
    return sum(inputs[1:], inputs[0])


class Activation(nn.Module):
  """A stand-alone named activation (Keras `Activation`, e.g. ResNet50's `conv1_relu`, `conv2_block1_out`)."""
  kind: str = "relu"

  def __call__(self, inputs):
    return activate(inputs, self.kind)


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
      window, strides = tuple(self.window), tuple(strides)
      if min(_window_geometry(inputs.shape[1:3], window, strides, padding)[1]) < 1:
        return nn.max_pool(inputs, window, strides, padding)  # an empty map, as flax returns it
      return max_pool(inputs, window, strides, padding)
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
  Layers named in an enclosing `frozen_batch_norm` always use the moving statistics.
  """
  return nn.BatchNorm(use_running_average=uses_moving_statistics(train, name), momentum=0.99, epsilon=epsilon,
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
  """Raises a one-line ValueError naming the first option of `model` that has an unusable value."""
  for field, (valid, advice) in _OPTION_CHECKS.items():
    if hasattr(model, field) and not valid(getattr(model, field)):
      raise ValueError(f"{arch}: {field}={getattr(model, field)!r} is invalid; {advice}")
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
  """A convolution of a stack; `batch_norm=False` keeps it without BatchNorm even when the model uses BN."""
  features: int
  kernel: int = 3
  strides: int = 1
  padding: Padding = "SAME"
  name: Optional[str] = None
  batch_norm: bool = True


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
  conv -> BN -> activation, named `<conv>_bn`, `<conv>_relu` beside a named conv (else Keras's automatic names).
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
      stack.append(Conv(spec.features, (spec.kernel,) * 2, (spec.strides,) * 2, spec.padding,
                        activation=None if normalized else activation, dtype=dtype,
                        name=names("conv2d", spec.name)))
      if normalized:
        bn_name, act_name = (None, None) if spec.name is None else (f"{spec.name}_bn", f"{spec.name}_relu")
        stack.append(batch_norm(train, name=names("batch_normalization", bn_name), axis_name=axis_name,
                                dtype=dtype))
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
                   batch_norm_default: bool = False, hidden_names: Optional[Sequence[str]] = None):
  """Builds (inside `model`'s compact `__call__`) and runs `specs` + head from the model's options.

  `model` provides num_classes, activation, pooling, head, dropout, dtype, axis_name and optionally batch_norm
  (None = `batch_norm_default`) and conv_dropout. Returns float32 logits.
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
  stack += classifier_head(model.head, hidden_units, num_classes=model.num_classes, names=names, train=train,
                           activation=model.activation, dropout_rate=model.dropout, hidden_names=hidden_names,
                           dtype=dtype)
  check_input_size(inputs, arch, spatial_ops(stack))
  outputs = inputs
  for layer in stack:
    outputs = layer(outputs)
  return outputs.astype(jnp.float32)
