"""Learning-rate schedules and optax optimizers, named as the tutorials name them, and frozen layers.

Schedules are functions of the optimizer step; the epoch-based ones (Keras `LearningRateScheduler`) are
converted with `steps_per_epoch`, which is known once the data is loaded.

Freezing (`config.freeze`, a regex matched with `re.fullmatch` on layer names, and `config.freeze_first`, the first
N layers in forward order as `cnnjax.models.introspect.layer_names` lists them; Keras's `model.layers[:N]` also
counts the InputLayer, so it is cnnjax's N - 1) gives the frozen parameters zero updates (`optax.multi_transform`
+ `set_to_zero`); the train step also runs their BatchNorm layers on the fixed moving statistics, as Keras (2.1.3
and later) runs a non-trainable BatchNormalization.
"""
import re
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from cnnjax.models import introspect

SCHEDULES = ("constant", "piecewise", "inverse_time", "warmup_cosine", "onecycle")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
WEIGHT_DECAY_PARAMS = ("all", "kernels")


def create_schedule(config: ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Returns lr(step) for `config.schedule`.

  - constant: `learning_rate`.
  - piecewise: Keras `lr_schedule(epoch)` with 0-based epochs: `learning_rate` until the first
    `(epoch, lr)` pair of `lr_drops` whose epoch is exceeded, e.g. ((5, 5e-5), (10, 3e-5)) gives 1e-4 for
    epochs 0-5, 5e-5 for 6-10, 3e-5 from 11 on.
  - inverse_time: Keras 2 optimizers' `decay`: lr / (1 + decay * iterations), per batch, not per epoch;
    `decay` defaults to learning_rate / num_epochs as in the tutorials.
  - warmup_cosine: linear warmup over `warmup_epochs`, then cosine decay to 0 at the end of training.
  - onecycle: optax's one-cycle (cosine) with peak `learning_rate` over the whole run.
  """
  lr = config.learning_rate
  total_steps = max(1, config.num_epochs * steps_per_epoch)
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "piecewise":
    # Keras passes the 0-based epoch and the rule is "epoch > e": the drop starts at epoch e + 1.
    drops = [((epoch + 1) * steps_per_epoch, value) for epoch, value in config.lr_drops]

    def piecewise(step):
      rate = jnp.asarray(lr, jnp.float32)
      for boundary, value in drops:
        rate = jnp.where(step >= boundary, value, rate)
      return rate
    return piecewise
  if config.schedule == "inverse_time":
    decay = config.decay if config.decay is not None else lr / config.num_epochs
    return lambda step: lr / (1.0 + decay * step)
  if config.schedule == "warmup_cosine":
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1))
  if config.schedule == "onecycle":
    return optax.cosine_onecycle_schedule(total_steps, lr)
  raise ValueError(f"unknown schedule {config.schedule!r}; choose one of {SCHEDULES}")


def decay_mask(config: ConfigDict):
  """optax's `mask` for weight decay: None (every parameter) or, for weight_decay_params='kernels', a function
  of the params marking those of 2+ dimensions (conv and dense kernels; not biases, BatchNorm scales/offsets)."""
  which = config.get("weight_decay_params", "all")  # configs saved before the field decayed everything
  if which == "all":
    return None
  if which == "kernels":
    return lambda params: jax.tree.map(lambda p: jnp.ndim(p) > 1, params)
  raise ValueError(f"unknown weight_decay_params {which!r}; choose one of {WEIGHT_DECAY_PARAMS}")


def create_optimizer(config: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """optax optimizer with Keras's default hyper-parameters, plus weight decay and gradient clipping."""
  name = config.optimizer
  mask = decay_mask(config)
  if name == "adam":
    optimizer = optax.adam(schedule, eps=1e-7)  # Keras's epsilon
  elif name == "adamw":
    optimizer = optax.adamw(schedule, eps=1e-7, weight_decay=config.weight_decay, mask=mask)
  elif name == "sgd":
    optimizer = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
  elif name == "rmsprop":
    optimizer = optax.rmsprop(schedule, decay=0.9, eps=1e-7)
  else:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
  transforms = []
  if config.grad_clip_norm:
    transforms.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay and name != "adamw":
    # L2 added to the gradient before the optimizer, as kernel_regularizer-style decay does (flax's imagenet
    # example adds weight_decay / 2 * |kernels|^2 to the loss: the same gradient, with weight_decay_params='kernels').
    transforms.append(optax.add_decayed_weights(config.weight_decay, mask=mask))
  transforms.append(optimizer)
  chained = optax.chain(*transforms)
  if config.nonfinite == "skip":
    # Steps whose gradients hold NaN/inf leave the parameters and optimizer state untouched.
    chained = optax.apply_if_finite(chained, max_consecutive_errors=10**9)
  return chained


def frozen_layers(model, image_shape: Sequence[int], config: ConfigDict) -> Tuple[str, ...]:
  """Names of the layers `config.freeze` / `config.freeze_first` select, in forward order."""
  if not config.get("freeze") and not config.get("freeze_first"):  # also configs saved before these fields
    return ()
  names = introspect.layer_names(model, image_shape)
  if config.freeze_first > len(names):
    raise ValueError(f"config.freeze_first={config.freeze_first} but {config.model} has {len(names)} layers")
  frozen = set(names[:config.freeze_first])
  if config.freeze:
    matched = [name for name in names if re.fullmatch(config.freeze, name)]
    if not matched:
      raise ValueError(f"config.freeze={config.freeze!r} matches none of {config.model}'s layers "
                       f"({', '.join(names[:4])}, ...); it must match whole layer names (re.fullmatch)")
    frozen.update(matched)
  return tuple(name for name in names if name in frozen)


def freeze(tx: optax.GradientTransformation, frozen: Sequence[str]) -> optax.GradientTransformation:
  """`tx` for the parameters of layers not in `frozen`; zero updates (and no optimizer state) for the others."""
  if not frozen:
    return tx
  frozen = frozenset(frozen)

  def labels(params):
    return {layer: jax.tree.map(lambda _, f=layer in frozen: "frozen" if f else "trained", layer_params)
            for layer, layer_params in params.items()}
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
