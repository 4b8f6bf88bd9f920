"""Learning-rate schedules and optax optimizers, named as the tutorials name them.

Schedules are functions of the optimizer step; the epoch-based ones (Keras `LearningRateScheduler`) are
converted with `steps_per_epoch`, which is known once the data is loaded.
"""
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

SCHEDULES = ("constant", "piecewise", "inverse_time", "warmup_cosine", "onecycle")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


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


def create_optimizer(config: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """optax optimizer with Keras's default hyper-parameters, plus weight decay and gradient clipping."""
  name = config.optimizer
  if name == "adam":
    optimizer = optax.adam(schedule, eps=1e-7)  # Keras's epsilon
  elif name == "adamw":
    optimizer = optax.adamw(schedule, eps=1e-7, weight_decay=config.weight_decay)
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
    # L2 added to the gradient before the optimizer, as kernel_regularizer-style decay does.
    transforms.append(optax.add_decayed_weights(config.weight_decay))
  transforms.append(optimizer)
  chained = optax.chain(*transforms)
  if config.nonfinite == "skip":
    # Steps whose gradients hold NaN/inf leave the parameters and optimizer state untouched.
    chained = optax.apply_if_finite(chained, max_consecutive_errors=10**9)
  return chained
