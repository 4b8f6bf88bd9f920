"""Modified backpropagation through ReLUs, owned by the explainers rather than the models: guided backprop
(Springenberg et al. 2015) and rectified, "deconvnet" backprop (Zeiler & Fergus 2014).

While an explainer's function is traced, `modified_backprop` intercepts the `activate` method of cnnjax's
layers (`cnnjax.models.layers.Activated`: every `activation=` of Conv/Dense/DepthwiseConv and every
`Activation`) and runs each ReLU/ReLU6 as one with the same forward and the modified gradient. A ReLU outside
those methods (a Linen model calling `jax.nn.relu` itself) would silently keep its true gradient, so
`check_reachable` refuses such a model with a one-line error instead.
"""
import contextlib
import functools
from typing import Iterator, Optional, Sequence

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp

from cnnjax.models import introspect
from cnnjax.models import layers as layers_lib

MODIFIERS = (None, "guided", "relu")

# What `jax.nn.relu` / `jax.nn.relu6` (and so `nn.relu`, `nn.relu6`) trace to: custom_jvp calls of these names.
_JAX_RELUS = ("relu", "relu6")


def _make_modified_relu(modifier: str, cap: Optional[float]):
  """`layers.clipped_relu(x, cap)` whose backward passes the incoming gradient g only where g > 0 ('relu':
  rectified, Zeiler & Fergus 2014) and, for 'guided' (Springenberg et al. 2015), also only where the forward
  input is in the ReLU's linear range (0 < x, and x < cap for ReLU6, as its true gradient vanishes there too)."""

  @jax.custom_vjp
  def modified_relu(x):
    return layers_lib.clipped_relu(x, cap)

  def forward(x):
    return layers_lib.clipped_relu(x, cap), x

  def backward(x, cotangent):
    passes = cotangent > 0
    if modifier == "guided":
      passes &= x > 0
      if cap is not None:
        passes &= x < cap
    return (jnp.where(passes, cotangent, 0).astype(cotangent.dtype),)

  modified_relu.defvjp(forward, backward)
  return modified_relu


_MODIFIED_RELUS = {(modifier, cap): _make_modified_relu(modifier, cap)
                   for modifier in MODIFIERS if modifier is not None for cap in layers_lib.RELU_CAPS.values()}


def check_modifier(modifier: Optional[str]) -> Optional[str]:
  """`modifier` if it is one of MODIFIERS, else a one-line ValueError listing them."""
  if modifier not in MODIFIERS:
    raise ValueError(f"unknown modifier {modifier!r}; choose one of {MODIFIERS}")
  return modifier


def _modify_relus(modifier: str):
  """An interceptor that runs the rectifiers of cnnjax's layers with `modifier`'s gradient."""

  def intercept(next_fun, args, kwargs, context):
    if context.method_name == "activate" and isinstance(context.module, layers_lib.Activated):
      inputs, kind = args
      if kind in layers_lib.RELU_CAPS:
        return _MODIFIED_RELUS[(modifier, layers_lib.RELU_CAPS[kind])](inputs)
    return next_fun(*args, **kwargs)

  return intercept


@contextlib.contextmanager
def modified_backprop(modifier: Optional[str]):
  """Within this context, the ReLUs and ReLU6s of cnnjax's layers traced into a computation backpropagate with
  `modifier`: None (the true gradient), 'guided' or 'relu' (rectified). The context must enclose the tracing of
  the function (e.g. the body of a jitted explainer); compiled functions keep the rule they were traced with.
  """
  if check_modifier(modifier) is None:
    yield
    return
  with nn.intercept_methods(_modify_relus(modifier)):
    yield


def _plain_relus(jaxpr) -> Iterator[str]:
  """The `jax.nn` rectifiers called in a jaxpr and in the jaxprs inside it (jit, scan, remat, cond, ...).

  custom_vjp calls are not entered: their gradient is their own rule (the modified ReLUs are custom_vjp calls).
  """
  for equation in jaxpr.eqns:
    if equation.primitive.name.startswith("custom_vjp"):
      continue
    if equation.primitive.name == "custom_jvp_call":
      debug_info = equation.params["call_jaxpr"].jaxpr.debug_info
      if debug_info is not None and debug_info.func_name in _JAX_RELUS:
        yield f"jax.nn.{debug_info.func_name}"
        continue
    for inner in jex.core.jaxprs_in_params(equation.params):
      yield from _plain_relus(inner)


@functools.lru_cache(maxsize=64)
def _unreached_relus(model, image_shape: Sequence[int], dtype) -> tuple:
  """The rectifiers left with their true gradient when `model`'s forward is traced under a modifier."""
  model = introspect.unwrap_model(model)
  variables = introspect.trace(model, image_shape, dtype).variables

  def forward(variables, images):
    with modified_backprop("guided"):  # which ReLUs are reached does not depend on the modifier
      return model.apply(variables, images, train=False)

  jaxpr = jax.make_jaxpr(forward)(variables, jax.ShapeDtypeStruct(image_shape, dtype))
  return tuple(_plain_relus(jaxpr.jaxpr))


def check_reachable(model, image_shape: Sequence[int], modifier: Optional[str], dtype=jnp.float32) -> None:
  """Raises a one-line ValueError if `modifier` cannot reach every ReLU of `model` on `image_shape` images, as
  with a model that calls `jax.nn.relu` itself: its gradients would silently be the true ones. Cached per
  (model, image shape, dtype)."""
  if check_modifier(modifier) is None:
    return
  shape = introspect.image_shape(image_shape)
  found = _unreached_relus(introspect.static_model(model), shape, jnp.dtype(dtype))
  if found:
    raise ValueError(f"modifier={modifier!r} cannot reach the ReLUs of {type(model).__name__} (it calls "
                     f"{' and '.join(sorted(set(found)))} directly, {len(found)} found); build its activations "
                     "from cnnjax.models.layers (Activation, or activation= on Conv/Dense) or use modifier=None")
