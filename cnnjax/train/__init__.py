"""Training: `train_and_evaluate(config, workdir)`, `restore(workdir)`, `lr_find(config, workdir)`, and the
pieces they are made of (bottom to top: config, optim, step, sharding, workdir, evaluation, checkpoint; experiment
builds a config's model, data and optimizer; weights restores runs and loads pretrained layers; runner is the
step-indexed loop and hooks its periodic work; bottleneck, lr_find and loop drive it)."""
from cnnjax.train.config import default_config, validate
from cnnjax.train.loop import train_and_evaluate
from cnnjax.train.lr_find import lr_find
from cnnjax.train.optim import create_optimizer, create_schedule
from cnnjax.train.runner import Interrupted
from cnnjax.train.step import TrainState, create_train_state, eval_step, train_step
from cnnjax.train.weights import restore

__all__ = ["Interrupted", "TrainState", "create_optimizer", "create_schedule", "create_train_state", "default_config",
           "eval_step", "lr_find", "restore", "train_and_evaluate", "train_step", "validate"]
