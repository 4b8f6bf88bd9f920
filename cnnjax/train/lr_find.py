"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates"; fastai's `lr_find`).

Trains the run's model, data and optimizer from scratch while the learning rate grows exponentially from
`min_lr` to `max_lr`, one batch per value, and records the loss. The loss is smoothed with a bias-corrected
exponential moving average; the sweep stops early once the smoothed loss exceeds `DIVERGENCE_FACTOR` times
the best so far, or the loss is not finite. The suggestion is the learning rate where the smoothed loss
falls fastest (steepest negative slope against log10(lr)), between the first few, noisy, steps and the
minimum of the loss; feed it to one-cycle with `--config.schedule=onecycle --config.learning_rate=<suggestion>`.

It runs on the training loop (`runner.run`) with the exponential schedule and a hook that records each loss and
stops the sweep. It is not a training run: it writes only `lr_find.json` and `lr_find.png` into the workdir, never a
checkpoint or config.json, and takes no workdir lock, so it can run beside (or before) a run on that workdir.
"""
import json
import math
import os
from typing import Dict, Optional

import jax
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from cnnjax.train import config as config_lib
from cnnjax.train import experiment
from cnnjax.train import loop
from cnnjax.train import runner
from cnnjax.train import sharding
from cnnjax.train import step as step_lib
from cnnjax.train import workdir as workdir_lib

SMOOTHING = 0.98  # weight of the past in the moving average (fastai's beta)
DIVERGENCE_FACTOR = 4.0
SKIP_START = 0.1  # share of the first steps the suggestion ignores: the average is still settling there


def exponential_schedule(min_lr: float, max_lr: float, steps: int) -> optax.Schedule:
  """lr(t) = min_lr * (max_lr / min_lr) ** (t / (steps - 1)): min_lr at step 0, max_lr at the last step."""
  return optax.exponential_decay(min_lr, transition_steps=steps - 1, decay_rate=max_lr / min_lr)


def suggest(lrs, smoothed_losses) -> float:
  """The lr of steepest descent of the smoothed loss against log10(lr), before the loss minimum.

  With fewer than three points to differentiate, the fallback rule of thumb: the lr of minimum loss / 10.
  """
  lrs, smoothed_losses = np.asarray(lrs, np.float64), np.asarray(smoothed_losses, np.float64)
  lowest = int(np.argmin(smoothed_losses))
  start = min(int(SKIP_START * len(lrs)), max(lowest - 2, 0))
  if lowest + 1 - start < 3:
    return float(max(lrs[lowest] / 10, lrs[0]))
  window = slice(start, lowest + 1)
  slopes = np.gradient(smoothed_losses[window], np.log10(lrs[window]))
  return float(lrs[window][int(np.argmin(slopes))])


def _resolve(value, default, name: str):
  value = default if value is None else value
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{name} must be a number, got {value!r}")
  return value


class RangeTest(runner.Hook):
  """Records each step's learning rate and loss; stops at a non-finite loss or once the smoothed loss exceeds
  DIVERGENCE_FACTOR times its best."""

  def __init__(self, steps: int, show: bool):
    self.lrs, self.losses, self.smoothed = [], [], []
    self.best, self.average, self.stopped = math.inf, 0.0, None
    self.bar = tqdm(total=steps, desc="lr_find", disable=not show, leave=False, dynamic_ncols=True)

  def on_metrics(self, step: int, metrics: Dict) -> None:
    if self.stopped:  # the step after the one that stopped the sweep, already launched: not part of it
      return
    loss = float(metrics["loss"])
    self.bar.update(1)
    if not math.isfinite(loss):
      self.stopped = f"loss became {loss} at lr {float(metrics['learning_rate']):.3g}"
      return
    self.average = SMOOTHING * self.average + (1 - SMOOTHING) * loss
    current = self.average / (1 - SMOOTHING ** (step + 1))
    self.lrs.append(float(metrics["learning_rate"]))
    self.losses.append(loss)
    self.smoothed.append(current)
    self.bar.set_postfix(lr=f"{self.lrs[-1]:.2e}", loss=f"{current:.4f}", refresh=False)
    self.best = min(self.best, current)
    if current > DIVERGENCE_FACTOR * self.best:
      self.stopped = (f"diverged at lr {self.lrs[-1]:.3g} (smoothed loss {current:.4g} > {DIVERGENCE_FACTOR:g}x "
                      f"best {self.best:.4g})")

  def due(self, done: int) -> bool:
    return True  # the stopping rule needs each loss before the next, larger, learning rate

  def stop_reason(self) -> Optional[str]:
    return self.stopped


def _check_arguments(steps, min_lr, max_lr) -> int:
  if int(steps) != steps or steps < 2:
    raise ValueError(f"the LR finder needs at least 2 steps, got steps={steps}")
  if not 0 < min_lr < max_lr:
    raise ValueError(f"the LR finder sweeps from min_lr up to max_lr: need 0 < min_lr < max_lr, got "
                     f"min_lr={min_lr}, max_lr={max_lr}")
  return int(steps)


def _sweep(config: ml_collections.ConfigDict, steps: int, schedule) -> RangeTest:
  """Trains the config's model from scratch (no pretrained layers) for up to `steps` steps with `schedule`."""
  model = experiment.create_model(config)
  experiment.check_model_input(model, config)
  splits = experiment.load_splits(config)
  task = loop.image_task(config, model, splits, schedule)
  mesh = sharding.data_mesh()
  replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = jax.device_put(step_lib.create_train_state(model, task.tx, task.input_shape, config.seed), replicated)
  train_step, _ = loop.jitted_steps(config, task, replicated, batch_sharding)
  test = RangeTest(steps, show=jax.process_index() == 0)
  runner.run(state, train_step, loop.TrainBatches(config, splits.train, batch_sharding),
             steps_per_epoch=task.steps_per_epoch, num_steps=steps, hooks=[test])
  test.bar.close()
  return test


def lr_find(config: ml_collections.ConfigDict, workdir: str, *, steps: Optional[int] = None,
            min_lr: Optional[float] = None, max_lr: Optional[float] = None) -> Dict:
  """Runs the range test for `config` and writes lr_find.json / lr_find.png into `workdir`.

  `steps`, `min_lr` and `max_lr` default to `config.lr_find_steps`, `config.lr_find_min`, `config.lr_find_max`.
  Returns {'lrs', 'losses' (raw, per step), 'smoothed_losses', 'suggestion', 'stopped' (why the sweep ended)}.
  """
  config_lib.validate(config)
  steps = _resolve(steps, config.lr_find_steps, "steps")
  min_lr = _resolve(min_lr, config.lr_find_min, "min_lr")
  max_lr = _resolve(max_lr, config.lr_find_max, "max_lr")
  steps = _check_arguments(steps, min_lr, max_lr)
  test = _sweep(config, steps, exponential_schedule(min_lr, max_lr, steps))
  stopped = test.stopped or "completed"
  if not test.lrs:
    raise ValueError(f"the LR finder's first step already failed ({stopped}); lower --config.lr_find_min")
  suggestion = suggest(test.lrs, test.smoothed)
  result = {"lrs": test.lrs, "losses": test.losses, "smoothed_losses": test.smoothed, "suggestion": suggestion,
            "stopped": stopped, "steps": steps, "min_lr": min_lr, "max_lr": max_lr,
            "method": "steepest descent of the smoothed loss vs log10(lr), before its minimum"}
  if jax.process_index() == 0:
    from cnnjax import viz
    os.makedirs(workdir, exist_ok=True)
    workdir_lib.write_text(workdir, "lr_find.json", json.dumps(result, indent=2))
    viz.lr_find_figure(test.lrs, test.smoothed, suggestion, os.path.join(workdir, "lr_find.png"),
                       raw_losses=test.losses)
    print(f"lr_find: {len(test.lrs)} steps from {test.lrs[0]:.3g} to {test.lrs[-1]:.3g} ({stopped}); suggested "
          f"learning rate {suggestion:.3g}; plot in {os.path.join(workdir, 'lr_find.png')}\n"
          f"  train with one-cycle: --config.schedule=onecycle --config.learning_rate={suggestion:.3g}")
  return result
