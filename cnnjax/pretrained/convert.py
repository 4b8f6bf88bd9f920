"""Fitting imported tensors into a model's variables, with one-line errors for anything that does not fit.

Importers translate a file into `tensors`: `{(collection, layer, param): np.ndarray}` already in cnnjax layouts
(HWIO kernels, `(in, out)` dense kernels, BN `params/{scale,bias}` + `batch_stats/{mean,var}`). `assemble` checks
them against the shapes the model expects, in the model's layer order, so the first mismatch named is the first
layer that does not fit.
"""
from typing import Dict, Iterable, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.models import introspect, layers

Key = Tuple[str, str, str]  # (collection, layer, param)


def fresh_variable(key: Key, shape: tuple, rng) -> jnp.ndarray:
  """A newly initialised variable as cnnjax's layers initialise it (Glorot-uniform kernels, BN identity)."""
  if key[2] in ("kernel", "depthwise_kernel"):
    return layers.default_kernel_init(rng, shape, jnp.float32)
  return (jnp.ones if key[2] in ("scale", "var") else jnp.zeros)(shape, jnp.float32)


def _describe(key: Key) -> str:
  collection, layer, param = key
  return f"layer {layer!r} ({collection}/{param})"


def assemble(model, image_shape: Tuple[int, int, int], tensors: Dict[Key, np.ndarray], *, source: str,
             arch: str, fresh_layers: Iterable[str] = (), seed: int = 0) -> dict:
  """Variables for `model` from `tensors`; `fresh_layers` (a new head) may be absent: initialised from `seed`.

  Raises a one-line ValueError at the first layer whose tensor is missing or has another shape, or for a tensor
  the model has no place for.
  """
  expected = introspect.variable_order(model, image_shape)
  fresh_layers = set(fresh_layers)
  fresh = []
  for key, shape in expected.items():
    if key not in tensors:
      if key[1] in fresh_layers:
        fresh.append(key)
        continue
      raise ValueError(f"{source}: missing tensor for {_describe(key)} of {arch} (shape {shape}); the file holds "
                       f"another architecture or is incomplete: check arch= and the model options")
    if tuple(tensors[key].shape) != shape:
      raise ValueError(f"{source}: {_describe(key)} has shape {tuple(tensors[key].shape)} in the file but {arch} "
                       f"expects {shape}; the file holds another architecture or width (check arch= and options)")
  extra = [key for key in tensors if key not in expected]
  if extra:
    raise ValueError(f"{source}: the file has weights for {_describe(extra[0])} that {arch} does not have "
                     f"({len(extra)} unused tensors); the file holds another architecture (check arch=)")
  flat = {key: jnp.asarray(tensors[key], jnp.float32) for key in expected if key in tensors}
  for key, rng in zip(fresh, jax.random.split(jax.random.PRNGKey(seed), max(len(fresh), 1))):
    flat[key] = fresh_variable(key, expected[key], rng)
  return flax.traverse_util.unflatten_dict(flat)


def shift_bn_epsilon(tensors: Dict[Key, np.ndarray], source_epsilon: float, model_epsilon: float) -> None:
  """Makes BatchNorm with `model_epsilon` compute what the source's did with `source_epsilon` (in place).

  Inference divides by sqrt(var + eps); storing var + source_eps - model_eps keeps that denominator exact.
  """
  for key in [key for key in tensors if key[0] == "batch_stats" and key[2] == "var"]:
    tensors[key] = tensors[key] + np.float32(source_epsilon - model_epsilon)
