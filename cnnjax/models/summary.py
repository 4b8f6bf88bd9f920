"""`summary(model, input_shape)`: a Keras `model.summary()`-like table, computed from shapes only."""
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_COLUMNS = (("Layer (type)", 44), ("Output Shape", 26), ("Param #", 14))


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _shape_text(shapes) -> str:
  texts = [str((None, *shape[1:])) for shape in shapes]
  return texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"


def _row(*cells) -> str:
  return "".join(f"{cell:<{width}}" for cell, (_, width) in zip(cells, _COLUMNS)).rstrip()


def summary(model: nn.Module, input_shape: Sequence[int], *, print_fn: Callable[[str], None] = print) -> str:
  """Each named layer's output shape (batch shown as None) and parameter count, in forward order, then totals.

  `input_shape` is (H, W, C) or (N, H, W, C). As Keras does, BatchNorm moving statistics count as
  (non-trainable) parameters. Everything is traced with `jax.eval_shape`: nothing is computed or allocated,
  so VGG16 at 224x224 summarises in seconds. Each line goes to `print_fn`; the whole table is returned.
  """
  shape = tuple(input_shape)
  if len(shape) == 3:
    shape = (1, *shape)
  if len(shape) != 4:
    raise ValueError(f"input_shape {tuple(input_shape)} is not (H, W, C) or (N, H, W, C)")

  called = []  # (layer name, module type, output shapes) in call order

  def record(next_fun, args, kwargs, context):
    outputs = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and len(context.module.path) == 1:  # the model's own layers
      shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(outputs)]
      called.append((context.module.path[0], type(context.module).__name__, shapes))
    return outputs

  def init(images):
    key = jax.random.key(0)
    with nn.intercept_methods(record):
      return model.init({"params": key, "dropout": key}, images, train=False)

  variables = jax.eval_shape(init, jax.ShapeDtypeStruct(shape, jnp.float32))
  collections = {name: tree for name, tree in variables.items() if name in ("params", "batch_stats")}
  trainable = _count(collections.get("params", {}))
  total = _count(collections)

  rule = "=" * sum(width for _, width in _COLUMNS)
  lines = [f'Model: "{type(model).__name__}"', "_" * len(rule), _row(*(title for title, _ in _COLUMNS)), rule]
  for name, kind, shapes in called:
    layer_params = _count([tree.get(name, {}) for tree in collections.values()])
    lines.append(_row(f"{name} ({kind})", _shape_text(shapes), f"{layer_params:,}"))
  lines += [rule, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}", "_" * len(rule)]
  for line in lines:
    print_fn(line)
  return "\n".join(lines)
