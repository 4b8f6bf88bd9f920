"""Looking inside any Linen model from outside it: its layers, their outputs, their variables in run order, and
BatchNorm layers frozen at their moving statistics.

A "layer" is any submodule, named by its path under the model joined with '/' (a flat Keras-style model's
layers are just `block5_conv3`, `conv5_block3_out`, `predictions`). Everything here works by `nn.intercept_methods`
while the model is traced, so no model needs hooks, flags or rewriting: an imported model works as soon as it is
a Linen module, whether or not it is built from `cnnjax.models.layers`.

Listing is one abstract trace of `init` per (model, input shape, dtype), cached (`trace`); `layer_infos`,
`num_classes` and `variable_order` read it. `capture_outputs` and `frozen_batch_norm` act on the computation
being traced, inside the caller's jit.
"""
import contextlib
import dataclasses
import functools
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """A layer as explainers and training choose it: by name, with its output shape."""
  name: str
  shape: Tuple[int, ...]  # output shape for a batch of one image
  kind: str  # the module's class name


@dataclasses.dataclass(frozen=True)
class LayerCall:
  """One call of a submodule's `__call__`, as the trace recorded it when the call returned."""
  path: Tuple[str, ...]
  kind: str  # the module's class name
  shapes: Tuple[Tuple[int, ...], ...]  # of each array in its output
  single_array: bool  # whether the output is one array (a layer explainers can capture)


@dataclasses.dataclass(frozen=True)
class Trace:
  """What one abstract `init` of a model on a batch of one image shows."""
  calls: Tuple[LayerCall, ...]  # every submodule call, children before the module that called them
  variables: Any  # {collection: {layer: ...}} of jax.ShapeDtypeStruct
  logits_shape: Tuple[int, ...]


class _ByIdentity:
  """Stands in for an unhashable model as a static jit argument (same object -> same compiled function)."""

  def __init__(self, model):
    self.model = model

  def __hash__(self):
    return id(self.model)

  def __eq__(self, other):
    return isinstance(other, _ByIdentity) and other.model is self.model


def static_model(model):
  """`model` as a hashable static argument: itself when hashable (a Linen dataclass), else by identity."""
  if not isinstance(model, nn.Module):
    raise TypeError(f"expected a flax.linen Module, got {type(model).__name__}; build one with "
                    "cnnjax.models.create(name, num_classes=...)")
  try:
    hash(model)
    return model
  except TypeError:
    return _ByIdentity(model)


def unwrap_model(model):
  """The model behind `static_model(model)`."""
  return model.model if isinstance(model, _ByIdentity) else model


def layer_name(module: nn.Module) -> str:
  """A bound submodule's layer name: its path under the model, joined with '/'."""
  return "/".join(module.path)


def image_shape(input_shape: Sequence[int]) -> Tuple[int, ...]:
  """(1, H, W, C) for an (H, W, C) or (B, H, W, C) `input_shape`: layers are listed for one image."""
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) == 3:
    return (1, *input_shape)
  if len(input_shape) == 4:
    return (1, *input_shape[1:])
  raise ValueError(f"input_shape must be (H, W, C) or (B, H, W, C); got {input_shape}")


@functools.lru_cache(maxsize=64)
def _trace(model, shape: Tuple[int, ...], dtype) -> Trace:
  calls = []

  def record(next_fun, args, kwargs, context):
    outputs = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path:
      leaves = jax.tree_util.tree_leaves(outputs)
      calls.append(LayerCall(tuple(context.module.path), type(context.module).__name__,
                             tuple(tuple(leaf.shape) for leaf in leaves), isinstance(outputs, jax.Array)))
    return outputs

  def init(images):
    key = jax.random.PRNGKey(0)
    with nn.intercept_methods(record):
      return unwrap_model(model).init_with_output({"params": key, "dropout": key}, images, train=False)

  logits, variables = jax.eval_shape(init, jax.ShapeDtypeStruct(shape, dtype))
  return Trace(tuple(calls), variables, tuple(logits.shape))


def trace(model, input_shape: Sequence[int], dtype=jnp.float32) -> Trace:
  """The model's submodule calls, variables and logits shape on one `input_shape` image, from an abstract
  `init` in inference mode (nothing is computed or allocated), cached per (model, input shape, dtype)."""
  return _trace(static_model(model), image_shape(input_shape), jnp.dtype(dtype))


def layer_infos(model, input_shape: Sequence[int], dtype=jnp.float32) -> Tuple[LayerInfo, ...]:
  """The layers whose output is one array, in the order their outputs are produced (a shared layer at its first
  use), with their output shapes for one image."""
  unique = {}
  for call in trace(model, input_shape, dtype).calls:
    if call.single_array:
      name = "/".join(call.path)
      unique.setdefault(name, LayerInfo(name, call.shapes[0], call.kind))
  return tuple(unique.values())


def layer_names(model, input_shape: Sequence[int]) -> list:
  """Names of the model's layers in forward order, for `input_shape` (H, W, C) or (B, H, W, C)."""
  return [info.name for info in layer_infos(model, input_shape)]


def num_classes(model, input_shape: Sequence[int], dtype=jnp.float32) -> int:
  """The number of logits the model gives per image."""
  return trace(model, input_shape, dtype).logits_shape[-1]


def variable_order(model, input_shape: Sequence[int], dtype=jnp.float32) -> Dict[tuple, tuple]:
  """{(collection, layer, ..., variable): shape} of every variable the model creates for `input_shape` images,
  ordered by the run order of the top-level layer that owns it, `params` first within a layer.

  Pytrees sort dict keys, so the order the layers run in is only seen while tracing; importers check weight
  files in this order, so the first mismatch they name is the first layer that does not fit.
  """
  traced = trace(model, input_shape, dtype)
  rank = {}
  for call in traced.calls:
    if len(call.path) == 1:
      rank.setdefault(call.path[0], len(rank))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(traced.variables))
  keys = sorted(flat, key=lambda key: (rank.get(key[1], len(rank)), key[0] != "params"))
  return {key: tuple(flat[key].shape) for key in keys}


def capture_outputs(model, variables, images, names: Sequence[str],
                    probes: Optional[Mapping[str, Any]] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """(logits, {name: output}) of the model applied in inference mode, recording each named layer's output (its
  first call's, if the layer is shared) after adding `probes[name]` to it where one is given.

  A zero probe leaves the computation unchanged, and the gradient with respect to it is the gradient at that
  layer's output: only the network above the layer is differentiated (Grad-CAM's cost stays one forward pass).
  To be called where the model is traced (e.g. inside jit); raises a one-line ValueError for a name that is
  not a layer of the model.
  """
  probes = probes or {}
  wanted = frozenset(names)
  captured = {}

  def capture(next_fun, args, kwargs, context):
    outputs = next_fun(*args, **kwargs)
    name = layer_name(context.module)
    if context.method_name == "__call__" and name in wanted and name not in captured:
      if probes.get(name) is not None:
        outputs = outputs + probes[name].astype(outputs.dtype)
      captured[name] = outputs
    return outputs

  with nn.intercept_methods(capture):
    logits = model.apply(variables, images, train=False)
  missing = [name for name in names if name not in captured]
  if missing:
    raise ValueError(f"{missing[0]!r} is not a layer of {type(model).__name__}; see "
                     "cnnjax.models.introspect.layer_names")
  return logits, captured


@contextlib.contextmanager
def frozen_batch_norm(names: Sequence[str]):
  """Within this context, the `nn.BatchNorm` layers called `names` normalise with their moving statistics, and
  leave them unchanged, even when the model is applied with train=True: Keras runs a BatchNormalization with
  `trainable = False` so (since Keras 2.1.3).

  Fine-tuning needs this: a frozen backbone normalising with the statistics of small new-domain batches feeds
  the head features unlike those it will see at inference. It acts on the `nn.BatchNorm` class, so any Linen
  model's BatchNorm layers can be frozen; the context must enclose the tracing of the model (e.g. the loss
  function of a jitted step).
  """
  names = frozenset(names)

  def freeze(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, nn.BatchNorm) or module.use_running_average
        or layer_name(module) not in names):
      return next_fun(*args, **kwargs)
    # Flax refuses use_running_average both as a field and as an argument, so the layer runs as a copy bound to
    # its own scope (the same variables) with the field set, whichever way the model chose train mode.
    frozen = module.clone(parent=module.scope, use_running_average=True)
    return frozen(args[0], **{key: value for key, value in kwargs.items() if key != "use_running_average"})

  with nn.intercept_methods(freeze):
    yield
