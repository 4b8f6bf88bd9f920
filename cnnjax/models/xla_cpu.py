"""XLA:CPU's own kernels for cnnjax's layers, chosen per platform when a program is lowered.

XLA:CPU runs a few of the operations these CNNs are made of far slower than the same arithmetic written another
way (bench/RESULTS.md has the numbers). The other ways live here; they exist for XLA:CPU's kernels alone, and
each gives the values and gradients of the operation it replaces, to float rounding:

  conv_as_matmul  a convolution on a map smaller than its kernel window (VGG16's 2x2 block5 maps, ResNet50's 1x1
                  stage-5 maps at 32px) as im2col + one matmul: XLA swaps such a convolution's operands and runs
                  it, and its input gradient, in a naive loop 30-60x slower than the matmul.
  strided_conv    a strided convolution whose input gradient is col2im (one matmul and strided adds) rather than
                  JAX's convolution over the stride-dilated output gradient, which XLA:CPU computes over all the
                  inserted zeros (1.4-3.2x the forward's time on ResNet's strided layers, 5.1x on ResNet50's stem).
  max_pool        max pooling differentiated over the window's strided views rather than by JAX's argmax
                  reduce-window and scatter, which took about half of simple_cnn's training step.
  materialized    a value pinned to one buffer by a divide by a runtime one, so that XLA:CPU's fusion stops
                  recomputing earlier residual blocks inside its layout copies (resnet20's step 1.2-1.6x slower).

Other compilers want the portable operations (`lax.conv_general_dilated`, flax's `max_pool`, the identity), so
the layers call the dispatchers `conv`, `max_pooling` and `materialize`, which stage both versions with
`lax.platform_dependent`. Lowering keeps the work-around where the program is lowered for CPU and the portable
operation elsewhere: `jax.export.export(..., platforms=('cuda',))` on a CPU host gives plain convolutions and
reduce-window pooling, and a multi-platform export holds both behind a platform switch that is resolved before
compilation. `platform_dependent` is a `lax.switch` on the platform, so reverse-mode differentiation goes into
each branch's own rule (the custom VJPs here included) and lowering again keeps one branch of the backward
pass. Forward mode (jvp) is unavailable wherever a custom VJP is staged, as for any `jax.custom_vjp`;
`kernels('portable')` stages none.

A fifth way is oneDNN's convolution kernels, the ones PyTorch runs on CPU, as XLA:CPU custom calls
(`cnnjax.models.onednn`, an optional library built by `python -m cnnjax.models.onednn build`): where a program is
lowered for CPU a float32 ungrouped convolution takes them under the path 'onednn', and under 'auto' for the ops
(forward, input gradient, kernel gradient) that `ONEDNN_WINS` lists for its shape (measured faster than XLA:CPU
with the work-arounds, bench/onednn_conv.py), XLA computing the others; without
the library cnnjax says so once in the log and keeps XLA's kernels.

`kernels(path, disable=...)` and the environment variable CNNJAX_KERNELS force a path: 'auto' (the default, per
platform), 'xla_cpu' (the work-arounds on every platform), 'portable' (plain lax everywhere) or 'onednn' (as
'auto', with oneDNN for every convolution it supports on CPU); `disable` turns single work-arounds off
(bench/ablations.py; 'onednn' too). Both are read while a function is traced.
"""
import contextlib
import functools
import os
from typing import Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.models import onednn

PATHS = ("auto", "xla_cpu", "portable", "onednn")
WORKAROUNDS = ("conv_as_matmul", "strided_conv", "max_pool", "materialized", "onednn")
ENVIRONMENT_VARIABLE = "CNNJAX_KERNELS"

Padding = Union[str, Sequence[Tuple[int, int]]]

# JAX user contexts, not plain context variables: their values are part of every jax.jit cache key, so a
# function (an explainer's inner jit included) traced under one choice is traced anew under another.
_path = jax.make_user_context(None)  # None: CNNJAX_KERNELS decides
_disabled = jax.make_user_context(frozenset())
_fusing = jax.make_user_context(False)  # see `fusing`


def _checked_path(path: str, source: str) -> str:
  if path not in PATHS:
    raise ValueError(f"{source}={path!r} is invalid; choose one of {', '.join(PATHS)}")
  return path


@contextlib.contextmanager
def kernels(path: Optional[str] = None, *, disable: Sequence[str] = ()):
  """Within this context, functions traced compute cnnjax's layers along `path`, without the work-arounds named
  in `disable` (which add to those an enclosing context disabled).

  Args:
    path: 'auto' (XLA:CPU's work-arounds where a program is lowered for CPU, the portable operations elsewhere),
      'xla_cpu' (the work-arounds on every platform), 'portable' (plain lax everywhere), 'onednn' (as 'auto', with
      oneDNN's kernels for every convolution they support on CPU), or None to keep the enclosing choice (by
      default CNNJAX_KERNELS, else 'auto').
    disable: a name, or names, from WORKAROUNDS whose operations take the portable version even where the
      work-around would apply (on a convolution `conv_as_matmul` leaves the way to `strided_conv`).

  The choice acts while a function is traced, and is part of `jax.jit`'s cache key: a function jitted under one
  choice is traced and compiled anew under another.
  """
  if path is not None:
    _checked_path(path, "xla_cpu.kernels: path")
  disable = (disable,) if isinstance(disable, str) else tuple(disable)
  unknown = [name for name in disable if name not in WORKAROUNDS]
  if unknown:
    raise ValueError(f"xla_cpu.kernels: unknown work-around {unknown[0]!r} in disable; choose from "
                     f"{', '.join(WORKAROUNDS)}")
  with _path(_path.value if path is None else path), _disabled(_disabled.value | frozenset(disable)):
    yield


@contextlib.contextmanager
def fusing():
  """Marks functions traced within as `cnnjax.models.fusion.inference_fusion`'s, whose fused oneDNN calls write
  each block's output in one buffer already: `materialize` then adds no divide (a pass of its own there)."""
  with _fusing(True):
    yield


def _path_for(workaround: str) -> str:
  """The path ('auto', 'xla_cpu' or 'portable') that functions traced now take for `workaround`."""
  if workaround in _disabled.value:
    return "portable"
  path = _path.value
  if path is None:  # read here, so that a bad value fails where it is used, in one line
    path = _checked_path(os.environ.get(ENVIRONMENT_VARIABLE) or "auto", ENVIRONMENT_VARIABLE)
  return path


def _per_platform(workaround: str, xla_cpu_version, portable_version, *args):
  """`xla_cpu_version(*args)` in programs lowered for CPU, `portable_version(*args)` in the others, unless the
  path for `workaround` is forced."""
  path = _path_for(workaround)
  if path in ("auto", "onednn"):
    return lax.platform_dependent(*args, cpu=xla_cpu_version, default=portable_version)
  return (xla_cpu_version if path == "xla_cpu" else portable_version)(*args)


# ---------------------------------------------------------------------------------------------------------------
# The dispatchers the layers call.


def conv(inputs, kernel, strides: Sequence[int], padding: Padding, feature_group_count: int = 1):
  """`lax.conv_general_dilated` of NHWC inputs with an HWIO kernel (no dilation), where the program runs on
  XLA:CPU through `conv_as_matmul` or `strided_conv` when one applies (the first not disabled)."""
  strides = tuple(strides)
  portable = functools.partial(_lax_conv, strides=strides, padding=padding, feature_group_count=feature_group_count)
  pairs = explicit_padding(inputs.shape[1:3], kernel.shape[:2], strides, padding)
  workaround = _conv_workaround(inputs.shape[1:3], kernel.shape[:2], strides, feature_group_count)
  if workaround is None:
    xla = portable
  else:
    version = {"conv_as_matmul": conv_as_matmul, "strided_conv": strided_conv}[workaround]
    xla = lambda inputs, kernel: version(inputs, kernel, strides, padding)
  ops = _onednn_ops(inputs, kernel, strides, pairs, feature_group_count)
  if ops:
    return lax.platform_dependent(inputs, kernel, default=portable,
                                  cpu=lambda inputs, kernel: onednn.conv(inputs, kernel, strides, pairs, (1, 1),
                                                                         ops, xla))
  if workaround is None:
    return portable(inputs, kernel)
  return _per_platform(workaround, xla, portable, inputs, kernel)


def _conv_workaround(spatial: Sequence[int], kernel_size: Sequence[int], strides: Sequence[int],
                     feature_group_count: int) -> Optional[str]:
  """The work-around XLA:CPU takes for a convolution: `conv_as_matmul` before `strided_conv`, skipping disabled
  ones, none for grouped convolutions."""
  if feature_group_count != 1:
    return None
  applies = {"conv_as_matmul": xla_swaps_conv_operands(spatial, kernel_size),
             "strided_conv": uses_col2im_input_gradient(strides, kernel_size)}
  return next((name for name, used in applies.items() if used and name not in _disabled.value), None)


# The convolutions (H, W, C_in, C_out, kh, kw, stride_h, stride_w) and the ops of each (onednn.OPS) that 'auto'
# gives oneDNN, where the library is built: those it computes faster than XLA:CPU with cnnjax's work-arounds on
# this project's CPU (bench/onednn_conv.py; the table and its run in bench/RESULTS.md).
_ALL = onednn.OPS
ONEDNN_WINS = {
    # simple_cnn
    (32, 32, 3, 6, 3, 3, 1, 1): _ALL,
    (32, 32, 6, 16, 3, 3, 1, 1): _ALL,
    (15, 15, 16, 16, 3, 3, 1, 1): _ALL,
    (15, 15, 16, 32, 3, 3, 1, 1): _ALL,
    # resnet20
    (32, 32, 3, 16, 3, 3, 1, 1): _ALL,
    (32, 32, 16, 16, 3, 3, 1, 1): _ALL,
    (32, 32, 16, 32, 3, 3, 2, 2): _ALL,
    (16, 16, 32, 32, 3, 3, 1, 1): _ALL,
    (16, 16, 32, 64, 3, 3, 2, 2): ('forward', 'kernel_gradient'),
    (8, 8, 64, 64, 3, 3, 1, 1): _ALL,
    # vgg16
    (32, 32, 3, 64, 3, 3, 1, 1): _ALL,
    (32, 32, 64, 64, 3, 3, 1, 1): _ALL,
    (16, 16, 64, 128, 3, 3, 1, 1): _ALL,
    (16, 16, 128, 128, 3, 3, 1, 1): _ALL,
    (8, 8, 128, 256, 3, 3, 1, 1): _ALL,
    (8, 8, 256, 256, 3, 3, 1, 1): _ALL,
    (4, 4, 256, 512, 3, 3, 1, 1): _ALL,
    (4, 4, 512, 512, 3, 3, 1, 1): _ALL,
    (2, 2, 512, 512, 3, 3, 1, 1): ('input_gradient', 'kernel_gradient'),
    # resnet50
    (224, 224, 3, 64, 7, 7, 2, 2): _ALL,
    (56, 56, 256, 64, 1, 1, 1, 1): ('forward', 'kernel_gradient'),
    (56, 56, 64, 64, 3, 3, 1, 1): _ALL,
    (56, 56, 64, 256, 1, 1, 1, 1): ('input_gradient', 'kernel_gradient'),
    (56, 56, 256, 128, 1, 1, 1, 1): ('kernel_gradient',),
    (56, 56, 128, 128, 3, 3, 2, 2): _ALL,
    (56, 56, 256, 512, 1, 1, 2, 2): ('input_gradient', 'kernel_gradient'),
    (28, 28, 128, 512, 1, 1, 1, 1): ('input_gradient', 'kernel_gradient'),
    (28, 28, 512, 128, 1, 1, 1, 1): ('forward', 'kernel_gradient'),
    (28, 28, 128, 128, 3, 3, 1, 1): _ALL,
    (28, 28, 512, 256, 1, 1, 1, 1): ('forward', 'kernel_gradient'),
    (28, 28, 256, 256, 3, 3, 2, 2): _ALL,
    (28, 28, 512, 1024, 1, 1, 2, 2): ('kernel_gradient',),
    (14, 14, 256, 1024, 1, 1, 1, 1): ('input_gradient', 'kernel_gradient'),
    (14, 14, 1024, 256, 1, 1, 1, 1): ('forward', 'kernel_gradient'),
    (14, 14, 256, 256, 3, 3, 1, 1): _ALL,
    (14, 14, 1024, 512, 1, 1, 1, 1): _ALL,
    (14, 14, 512, 512, 3, 3, 2, 2): ('forward', 'input_gradient'),
    (14, 14, 1024, 2048, 1, 1, 2, 2): ('kernel_gradient',),
    (7, 7, 512, 2048, 1, 1, 1, 1): ('input_gradient', 'kernel_gradient'),
    (7, 7, 2048, 512, 1, 1, 1, 1): _ALL,
    (7, 7, 512, 512, 3, 3, 1, 1): _ALL,
}


def onednn_computes(inputs, kernel, pairs) -> bool:
  """Whether an ungrouped convolution traced now may run as oneDNN's fused inference call
  (`cnnjax.models.fusion`): the 'auto' or 'onednn' path, a geometry oneDNN supports, the library loaded."""
  path = _path_for("onednn")
  return (path in ("auto", "onednn") and onednn.supports(inputs, kernel, pairs)
          and onednn.available(explicitly_asked=path == "onednn"))


def _onednn_ops(inputs, kernel, strides: Sequence[int], pairs, feature_group_count: int) -> Tuple[str, ...]:
  """The ops of a convolution traced now that oneDNN computes where the program runs on CPU: on the 'onednn'
  path all of a convolution it supports, on 'auto' those ONEDNN_WINS lists for float32 and all of a bfloat16
  one (XLA:CPU has no fast bfloat16 convolution: bench/RESULTS.md); none unless the library is loaded (else said
  once), and none in bfloat16 where the CPU has no bfloat16 arithmetic (oneDNN would emulate it)."""
  path = _path_for("onednn")
  if path not in ("auto", "onednn") or not onednn.supports(inputs, kernel, pairs, feature_group_count):
    return ()
  bfloat16 = inputs.dtype == jnp.bfloat16
  ops = onednn.OPS
  if path == "auto" and not bfloat16:
    ops = ONEDNN_WINS.get((*inputs.shape[1:], kernel.shape[3], *kernel.shape[:2], *strides), ())
  if not ops or not onednn.available(explicitly_asked=path == "onednn"):
    return ()
  if bfloat16 and not onednn.native_bfloat16():
    return ()
  return tuple(op for op in onednn.OPS if op in ops)


def max_pooling(inputs, window: Sequence[int], strides: Sequence[int], padding: Padding):
  """flax's `nn.max_pool` of NHWC inputs, differentiated as `max_pool` where the program runs on XLA:CPU."""
  window, strides = tuple(window), tuple(strides)
  portable = functools.partial(nn.max_pool, window_shape=window, strides=strides, padding=padding)
  if min(_window_geometry(inputs.shape[1:3], window, strides, padding)[1]) < 1:
    return portable(inputs)  # an empty map, as flax returns it
  return _per_platform("max_pool", lambda inputs: max_pool(inputs, window, strides, padding), portable, inputs)


def materialize(values):
  """`values`; where the program runs on XLA:CPU, computed once into one buffer (`materialized`), unless traced
  for `fusing`."""
  if _fusing.value:
    return values
  return _per_platform("materialized", materialized, lambda values: values, values)


# ---------------------------------------------------------------------------------------------------------------
# The work-arounds.


def _lax_conv(inputs, kernel, strides, padding, feature_group_count=1):
  return lax.conv_general_dilated(inputs, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=feature_group_count)


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
  patches = jnp.concatenate(_window_slices(padded, window, strides, out_shape), axis=-1)
  return patches @ kernel.reshape(-1, kernel.shape[-1])


# Above this many taps col2im's strided adds cost more than XLA's own input gradient (AlexNet's 11x11/4 stem
# 0.72x; ResNet50's 7x7/2 stem 1.37x faster; bench/strided_conv.py).
_COL2IM_MAX_TAPS = 49


def uses_col2im_input_gradient(strides: Sequence[int], kernel_size: Sequence[int]) -> bool:
  """Whether a convolution's input gradient is taken by `strided_conv`'s col2im rather than by JAX's rule."""
  return max(strides) > 1 and kernel_size[0] * kernel_size[1] <= _COL2IM_MAX_TAPS


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
  views = _window_slices(padded, window, strides, out_shape)
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


# ---------------------------------------------------------------------------------------------------------------
# Window geometry shared by the work-arounds.


def _window_geometry(spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Padding):
  """((before, after) pads per spatial axis, the output (H', W')) of a windowed op on an (H, W) map; `padding` is
  'SAME'/'VALID' in any case (TensorFlow's) or explicit (before, after) pairs."""
  pads = tuple(lax.padtype_to_pads(spatial, window, strides, padding)) if isinstance(padding, str) else padding
  out_shape = tuple((spatial[axis] + sum(pads[axis]) - window[axis]) // strides[axis] + 1 for axis in range(2))
  return pads, out_shape


def explicit_padding(spatial: Sequence[int], window: Sequence[int], strides: Sequence[int],
                     padding: Padding) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  """The ((top, bottom), (left, right)) pads of `padding` ('SAME'/'VALID' in any case, or pairs) on this map."""
  padding = padding.upper() if isinstance(padding, str) else padding
  return tuple(tuple(pair) for pair in _window_geometry(spatial, window, strides, padding)[0])


def _pad_for_windows(inputs, window: Sequence[int], strides: Sequence[int], padding: Padding, value):
  """(NHWC inputs padded with `value` as `padding` asks, the (before, after) pads, the output (H', W'))."""
  pads, out_shape = _window_geometry(inputs.shape[1:3], window, strides, padding)
  padded = jnp.pad(inputs, ((0, 0), *pads, (0, 0)), constant_values=value)
  return padded, pads, out_shape


def _window_slices(padded, window: Sequence[int], strides: Sequence[int], out_shape: Sequence[int]) -> list:
  """The kh*kw strided views of a padded NHWC map, in row-major window order: view (i, j) holds pixel (i, j)
  of every window, so elementwise work over the views is work over each window."""
  return [padded[:, i:i + (out_shape[0] - 1) * strides[0] + 1:strides[0],
                 j:j + (out_shape[1] - 1) * strides[1] + 1:strides[1]]
          for i in range(window[0]) for j in range(window[1])]


def _summed_window_slices_transpose(views: Sequence, window: Sequence[int], strides: Sequence[int], padding: Padding,
                                    input_shape: Sequence[int]):
  """The transpose of `_window_slices` (after `_pad_for_windows`): each view's values added back at the pixels it
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
