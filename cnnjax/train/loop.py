"""`train_and_evaluate(config, workdir)`: the whole run, resumable, phases included.

A run trains a `Task` (a model on image sets: the config's model on images, or with config.bottleneck a dense head
on a backbone's features) through `runner.run`, one loop over the global step whose periodic hooks evaluate,
checkpoint, report and stop; then it evaluates the best weights (or the last epoch's: restore_best_weights).
"""
import functools
import json
import os
from typing import Callable, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from cnnjax import data as data_lib
from cnnjax import explain
from cnnjax import models
from cnnjax.train import bottleneck
from cnnjax.train import checkpoint as checkpoint_lib
from cnnjax.train import config as config_lib
from cnnjax.train import evaluation
from cnnjax.train import experiment
from cnnjax.train import hooks as hooks_lib
from cnnjax.train import optim
from cnnjax.train import runner
from cnnjax.train import sharding
from cnnjax.train import step as step_lib
from cnnjax.train import weights
from cnnjax.train import workdir as workdir_lib

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Trains `config` into `workdir` (resuming what is there), then evaluates the best weights (the last epoch's
  where config.early_stopping.restore_best_weights is False).

  Returns the evaluation written to eval.json.
  """
  config_lib.validate(config)
  config = experiment.resolve(config)
  is_writer = jax.process_index() == 0
  with workdir_lib.exclusive(workdir, enabled=is_writer):
    if config.phases:
      return _train_phases(config, workdir)
    return _train(config, workdir, is_writer)


def phase_configs(config: ml_collections.ConfigDict, workdir: str) -> list:
  """(sub-workdir, config) per phase: the config with the phase's overrides; later phases start from the last."""
  runs = []
  for index, overrides in enumerate(config.phases, start=1):
    overrides = dict(overrides)
    if "phases" in overrides:
      raise ValueError(f"config.phases[{index - 1}] sets 'phases'; phases cannot nest")
    phase = config.copy_and_resolve_references()
    phase.phases = ()
    for key, value in overrides.items():
      if key not in phase:
        raise ValueError(f"config.phases[{index - 1}] sets unknown field {key!r}")
      phase[key] = value
    if runs:
      phase.pretrained = runs[-1][0]
    runs.append((os.path.join(workdir, f"phase{index}"), phase))
  return runs


def _train_phases(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Runs each phase in `<workdir>/phase<i>` (resuming finished or partial phases); returns the last's eval."""
  runs = phase_configs(config, workdir)
  for _, phase in runs:
    config_lib.validate(phase)
  workdir_lib.prepare(workdir, config)
  if jax.process_index() == 0:
    workdir_lib.write_text(workdir, "config.json", config_lib.to_json(config))
  results = None
  for index, (phase_dir, phase) in enumerate(runs, start=1):
    print(f"phase {index}/{len(runs)} in {phase_dir}")
    results = train_and_evaluate(phase, phase_dir)
  if jax.process_index() == 0:
    workdir_lib.write_text(workdir, "eval.json", json.dumps(results, indent=2))
  return results


def _train(config: ml_collections.ConfigDict, workdir: str, is_writer: bool) -> Dict:
  workdir_lib.prepare(workdir, config)
  model = experiment.create_model(config)
  experiment.check_model_input(model, config)
  splits = experiment.load_splits(config)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.class_names = list(splits.class_names)
  if is_writer:
    workdir_lib.write_text(workdir, "config.json", config_lib.to_json(config))
  if config.bottleneck.layer:
    task = bottleneck.task(config, workdir, model, weights.initial_variables(model, config), splits)
  else:
    task = image_task(config, model, splits)
  return fit(config, workdir, task, is_writer)


def image_task(config: ml_collections.ConfigDict, model: nn.Module, splits: data_lib.Splits,
               schedule=None) -> experiment.Task:
  """The config's model on the images, with its augmentation, frozen layers and pretrained layers; `schedule`
  replaces the config's learning-rate schedule (the LR finder's sweep)."""
  steps_per_epoch = experiment.train_steps_per_epoch(config, len(splits.train))
  schedule = schedule or optim.create_schedule(config, steps_per_epoch)
  initial = functools.partial(weights.load_pretrained, model, config=config) if config.pretrained else None
  return experiment.Task(model, splits, experiment.image_shape(config), steps_per_epoch, schedule,
              experiment.create_optimizer(config, model, schedule), experiment.preprocess_settings(config),
              experiment.augment_settings(config),
              optim.frozen_layers(model, experiment.image_shape(config), config), initial, overlays=True)


def jitted_steps(config, task: experiment.Task, replicated, batch_sharding):
  """(train_step, eval_step) of the task, jitted with the state replicated and the batch sharded."""
  train_step = jax.jit(
      functools.partial(step_lib.train_step, model=task.model, num_classes=config.num_classes,
                        preprocess=task.preprocess, augment=task.augment, label_smoothing=config.label_smoothing,
                        mixup_alpha=config.get("mixup_alpha", 0.0),
                        learning_rate_fn=task.schedule, frozen=task.frozen),
      in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(
      functools.partial(step_lib.eval_step, model=task.model, num_classes=config.num_classes,
                        preprocess=task.preprocess, test_time_flip=config.get("test_time_flip", False)),
      in_shardings=(replicated, batch_sharding), out_shardings=replicated)
  return train_step, eval_step


class TrainBatches:
  """`runner.run`'s batches(epoch, start_batch): the global batches of a training epoch from `start_batch` on,
  each process feeding its own share.

  For a streamed training set, `state()` is where every process's reader is ({'epoch', 'batch', 'positions': one
  per process}; past undecodable files a reader is further into its share than the batch alone says), saved
  with mid-epoch checkpoints; `resume` (such a state) puts the readers back there.
  """

  def __init__(self, config, images: data_lib.pipeline.Images, batch_sharding, resume: Optional[Dict] = None):
    self.config, self.images, self.batch_sharding, self.resume = config, images, batch_sharding, resume
    self.reader = None

  def _position(self, epoch: int, start_batch: int) -> Optional[int]:
    """This process's saved reader position at (epoch, start_batch), if the resumed checkpoint was saved there."""
    if not self.resume or (self.resume["epoch"], self.resume["batch"]) != (epoch, start_batch):
      return None
    positions = self.resume["positions"]
    if len(positions) == jax.process_count():
      return int(positions[jax.process_index()])
    if all(position == start_batch * (self.config.batch_size // len(positions)) for position in positions):
      return None  # nothing was skipped: the batch alone places every process's reader
    raise ValueError(f"the checkpoint's streamed input was saved by {len(positions)} processes past skipped "
                     f"files; resume it with {len(positions)} processes")

  def __call__(self, epoch: int, start_batch: int):
    self.reader = data_lib.batches(self.images, batch_size=self.config.batch_size, seed=self.config.seed,
                                   epoch=epoch, shuffle=True, start_batch=start_batch,
                                   process_index=jax.process_index(), process_count=jax.process_count(),
                                   position=self._position(epoch, start_batch))
    self.epoch = epoch
    return (sharding.global_batch(batch, self.batch_sharding) for batch in self.reader)

  def state(self) -> Optional[Dict]:
    """Where the streamed readers are (a collective over processes), None for in-memory sets."""
    if not isinstance(self.reader, data_lib.streaming.TrainReader):
      return None
    positions = [self.reader.position]
    if jax.process_count() > 1:
      positions = multihost_utils.process_allgather(np.asarray(self.reader.position, np.int64)).tolist()
    return {"epoch": self.epoch, "batch": self.reader.batch, "positions": positions}


def _validation(splits: data_lib.Splits) -> Optional[data_lib.ImageSet]:
  """The validation split, or None when there is none (validation_split=0) or it is empty."""
  return splits.validation if splits.validation is not None and len(splits.validation) else None


def _start(config, workdir: str, task: experiment.Task, checkpoints, replicated):
  """(state, progress): restored from the latest checkpoint, else fresh (with the task's starting layers)."""
  state = jax.device_put(step_lib.create_train_state(task.model, task.tx, task.input_shape, config.seed), replicated)
  restored = checkpoints.restore_latest(state)
  if restored is None:
    if task.initial_variables is not None:
      state = jax.device_put(state.replace(**task.initial_variables(state.variables)), replicated)
    return state, hooks_lib.Progress.from_record(None)
  state, record = restored
  progress = hooks_lib.Progress.from_record(record)
  epoch, batch = divmod(int(state.step), task.steps_per_epoch)
  where = f"epoch {epoch + 1}, batch {batch}" if batch else f"epoch {len(progress.history)}"
  print(f"resuming {workdir} at {where} (step {int(state.step)})")
  return state, progress


def _gradcam_overlays(model, images, preprocess: Dict) -> Callable[[Dict], np.ndarray]:
  """variables -> (N, H, W, 3) floats in [0, 1]: each uint8 image with its Grad-CAM map for the predicted class."""
  from cnnjax import viz  # imports matplotlib: only runs that ask for overlays need it
  inputs = data_lib.preprocess(jnp.asarray(images, jnp.float32), **preprocess)

  def overlays(variables):
    targets = jnp.argmax(model.apply(variables, inputs, train=False), axis=-1)
    maps = jax.device_get(explain.gradcam(model, variables, inputs, targets))
    return np.stack([viz.overlay_array(image, heatmap) for image, heatmap in zip(images, maps)])
  return overlays


def _hooks(config, workdir: str, task: experiment.Task, progress, checkpoints, writer, stop, validate, probe,
           input_state, is_writer):
  validation = _validation(task.splits)
  explained = data_lib.head(validation if validation is not None else task.splits.train,
                            config.tensorboard_explain_images).images
  overlays = (_gradcam_overlays(task.model, explained, task.preprocess)
              if task.overlays and len(explained) else None)
  spe = task.steps_per_epoch
  metrics = hooks_lib.Metrics(progress, spe, config.num_epochs, stop_on_nonfinite=config.nonfinite == "stop",
                              show=is_writer)
  evaluate = hooks_lib.Evaluation(progress, spe, schedule=task.schedule, monitor=config.early_stopping.monitor,
                                  validate=validate, probe=probe)
  return [metrics, evaluate,
          hooks_lib.Checkpointing(checkpoints, progress, evaluate, every=config.checkpoint_every_steps, stop=stop,
                                  input_state=input_state),
          hooks_lib.Report(progress, spe, workdir=workdir, writer=writer, num_epochs=config.num_epochs,
                           overlays=overlays, is_writer=is_writer),
          hooks_lib.EarlyStopping(progress, config.early_stopping.monitor, config.early_stopping.patience), stop]


def fit(config: ml_collections.ConfigDict, workdir: str, task: experiment.Task, is_writer: bool) -> Dict:
  """Trains `task` for config.num_epochs (resuming the workdir's latest checkpoint), then evaluates its best
  weights on the test split if the dataset has one, else the validation split (else the training split)."""
  mesh = sharding.data_mesh()
  replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  if is_writer and len(task.input_shape) == 3:  # images, or a backbone's feature maps
    summary = models.summary(task.model, (1, *task.input_shape), print_fn=lambda line: None)
    workdir_lib.write_text(workdir, "summary.txt", summary)
    logging.info("model %s:\n%s", config.model, summary)
  checkpoints = checkpoint_lib.Checkpoints(workdir, config.keep_checkpoints)
  state, progress = _start(config, workdir, task, checkpoints, replicated)
  train_step, eval_step = jitted_steps(config, task, replicated, batch_sharding)
  score = lambda images: functools.partial(evaluation.evaluate, eval_step, images=images,
                                           batch_size=config.eval_batch_size, batch_sharding=batch_sharding)
  splits = task.splits
  validation = _validation(splits)
  probe = data_lib.head(splits.train, config.eval_batch_size)

  from clu import metric_writers  # imports TensorFlow (seconds): only runs that train need it
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_writer)
  start = int(state.step)
  if start == 0:
    # clu flattens nested fields to dotted names ('augment.rotation'); class names are data, not settings.
    writer.write_hparams({k: v for k, v in config.to_dict().items() if k not in config_lib.DERIVED_FIELDS})
  batches = TrainBatches(config, splits.train, batch_sharding, resume=progress.input)
  with runner.StopRequests() as stop:
    hooks = _hooks(config, workdir, task, progress, checkpoints, writer, stop,
                   score(validation) if validation is not None else None, score(probe), batches.state, is_writer)
    state, reason = runner.run(state, train_step, batches, steps_per_epoch=task.steps_per_epoch,
                               num_steps=config.num_epochs * task.steps_per_epoch, hooks=hooks)
  if reason:
    print(reason)
  if is_writer and progress.history and int(state.step) == start:
    # Nothing was left to train (a rerun after the last checkpoint): metrics.jsonl and the curves may lack
    # that epoch if writing them failed (a full disk), so they are written again from the checkpoint's record.
    workdir_lib.write_history(workdir, progress.history)
  return _evaluate_final(config, workdir, task, state, checkpoints, writer, eval_step, batch_sharding, is_writer)


def _evaluate_final(config, workdir, task: experiment.Task, state, checkpoints, writer, eval_step, batch_sharding,
                   is_writer: bool) -> Dict:
  restored = checkpoints.restore_final(state, config_lib.restores_best_weights(config))
  checkpoints.close()
  writer.close()
  final_state = restored[0] if restored else state
  splits = task.splits
  validation = _validation(splits)
  # A dataset's own test split (celeb_a) reports the weights validation chose; otherwise the validation split.
  split_name, eval_split = (("test", splits.test) if splits.test is not None else
                            ("validation", validation) if validation is not None else
                            ("train (no validation split)", splits.train))
  results = evaluation.evaluate(eval_step, final_state.variables, eval_split, config.eval_batch_size,
                                batch_sharding, class_names=splits.class_names)
  results["split"] = split_name
  results["epoch"] = restored[1]["history"][-1]["epoch"] if restored else None
  if is_writer:
    workdir_lib.write_outputs(workdir, results, splits.class_names)
    if task.finish is not None:
      task.finish(jax.device_get(final_state.variables))
  epoch = "-" if results["epoch"] is None else results["epoch"] + 1  # 1-based, as the epoch lines
  print(f"eval ({results['split']}, weights of epoch {epoch}): loss {results['loss']:.4f}, "
        f"accuracy {results['accuracy']:.4f}; outputs in {workdir}")
  return results
