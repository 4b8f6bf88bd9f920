"""What an epoch of Bakshi's cats-vs-dogs AlexNet and VGG16 costs on this machine, against the KDnuggets CNN's.

  python bench/catdog_epoch_cost.py                  # catdog_cnn, alexnet, vgg16_catdog (~10 min on 2 busy cores)
  python bench/catdog_epoch_cost.py --configs alexnet --repeats 3

Each config's own training step (its model, batch, image size, optimizer, schedule, augmentation and
preprocessing, jitted as train.py jits it) and evaluation step run on random uint8 batches, interleaved
(bench/common.interleave: A B C A B C, so the machine's load hits every model alike). An epoch of the shipped
1,600 / 400 split is then `train steps x step time + eval batches x eval time`; a full run is the config's
num_epochs of those. Prints one Markdown table; the ratios against catdog_cnn are what carries to another
machine, the seconds are this machine's under its load at the time (printed beside them).
"""
import argparse
import functools
import importlib
import math
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402  (bench/common.py)
from cnnjax import models  # noqa: E402
from cnnjax.train import experiment, optim  # noqa: E402
from cnnjax.train import step as step_lib  # noqa: E402

TRAIN_IMAGES, VALIDATION_IMAGES = 1600, 400  # ../shared/data/cats_vs_dogs/train.zip with validation_split 0.2


def step_calls(config_name: str) -> dict:
  """{'<config> train': one optimizer step, '<config> eval': one evaluation batch} of configs/<config_name>.py."""
  config = importlib.import_module(f"configs.{config_name}").get_config()
  model = models.create(config.model, num_classes=config.num_classes)
  steps_per_epoch = experiment.train_steps_per_epoch(config, TRAIN_IMAGES)
  schedule = optim.create_schedule(config, steps_per_epoch)
  shape = (config.image_size, config.image_size, config.channels)
  state = step_lib.create_train_state(model, optim.create_optimizer(config, schedule), shape, seed=0)
  preprocess = experiment.preprocess_settings(config)
  train = jax.jit(functools.partial(step_lib.train_step, model=model, num_classes=config.num_classes,
                                    preprocess=preprocess, augment=experiment.augment_settings(config),
                                    label_smoothing=config.label_smoothing), donate_argnums=0)
  evaluate = jax.jit(functools.partial(step_lib.eval_step, model=model, num_classes=config.num_classes,
                                       preprocess=preprocess))
  rng = np.random.default_rng(0)

  def batch(size: int) -> dict:
    return {"images": jnp.asarray(rng.integers(0, 256, (size, *shape), np.uint8)),
            "labels": jnp.asarray(rng.integers(0, config.num_classes, size)), "mask": jnp.ones(size)}

  train_batch, eval_batch = batch(config.batch_size), batch(config.eval_batch_size)
  train_batch.pop("mask")
  cell = {"state": state}

  def train_call():
    cell["state"], metrics = train(cell["state"], train_batch)
    return metrics

  def eval_call():
    return evaluate(cell["state"].variables, eval_batch)
  return {"config": config, "steps": steps_per_epoch, "calls": {f"{config_name} train": train_call,
                                                                 f"{config_name} eval": eval_call}}


def epoch_rows(setups: dict, timed: dict) -> list:
  """One row per config: step and epoch seconds, the full run's hours and the epoch's ratio to the first config."""
  rows, reference = [], None
  for name, setup in setups.items():
    config = setup["config"]
    train_s, eval_s = (timed[f"{name} {kind}"].get("median_s") for kind in ("train", "eval"))
    if train_s is None or eval_s is None:
      rows.append({"config": name, "error": timed[f"{name} train"].get("error") or timed[f"{name} eval"].get("error")})
      continue
    epoch_s = setup["steps"] * train_s + math.ceil(VALIDATION_IMAGES / config.eval_batch_size) * eval_s
    reference = reference or epoch_s
    rows.append({"config": name, "model": config.model, "image px": config.image_size, "batch": config.batch_size,
                 "train step s": train_s, "eval batch s": eval_s, "epoch s": epoch_s,
                 "epoch / first row": epoch_s / reference, "epochs": config.num_epochs,
                 "full run h": epoch_s * config.num_epochs / 3600})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=["catdog_cnn", "alexnet", "vgg16_catdog"])
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--target_seconds", type=float, default=1.0, help="length of one timed repeat")
  args = parser.parse_args()
  print(f"load average before: {os.getloadavg()}", flush=True)
  setups = {name: step_calls(name) for name in args.configs}
  calls = {label: call for setup in setups.values() for label, call in setup["calls"].items()}
  timed = common.interleave(calls, repeats=args.repeats, target_seconds=args.target_seconds, settle=0,
                            log=lambda line: print(line, flush=True))
  print(f"load average after: {os.getloadavg()}")
  print(common.environment())
  common.print_report(epoch_rows(setups, timed))


if __name__ == "__main__":
  main()
