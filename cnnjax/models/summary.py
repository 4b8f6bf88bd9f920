"""`summary(model, input_shape)`: a Keras `model.summary()`-like table, computed from shapes only."""
from typing import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np

from cnnjax.models import introspect

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
  (non-trainable) parameters. The model is traced abstractly (`introspect.trace`): nothing is computed or
  allocated, so VGG16 at 224x224 summarises in seconds. Each line goes to `print_fn`; the whole table is returned.
  """
  traced = introspect.trace(model, input_shape)
  collections = {name: tree for name, tree in traced.variables.items() if name in ("params", "batch_stats")}
  trainable = _count(collections.get("params", {}))
  total = _count(collections)

  rule = "=" * sum(width for _, width in _COLUMNS)
  lines = [f'Model: "{type(model).__name__}"', "_" * len(rule), _row(*(title for title, _ in _COLUMNS)), rule]
  for call in traced.calls:
    if len(call.path) == 1:  # the model's own layers, as Keras lists them
      name = call.path[0]
      layer_params = _count([tree.get(name, {}) for tree in collections.values()])
      lines.append(_row(f"{name} ({call.kind})", _shape_text(call.shapes), f"{layer_params:,}"))
  lines += [rule, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}", "_" * len(rule)]
  for line in lines:
    print_fn(line)
  return "\n".join(lines)
