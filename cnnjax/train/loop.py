"""`train_and_evaluate(config, workdir)`: the whole run, resumable; `restore(workdir)` for what comes after."""
import functools
import math
import os
import signal
import threading
import time
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from cnnjax import data as data_lib
from cnnjax import explain
from cnnjax import models
from cnnjax.train import checkpoint as checkpoint_lib
from cnnjax.train import config as config_lib
from cnnjax.train import evaluation
from cnnjax.train import optim
from cnnjax.train import sharding
from cnnjax.train import step as step_lib
from cnnjax.train import transfer
from cnnjax.train import workdir as workdir_lib


def create_model(config: ml_collections.ConfigDict):
  return models.create(config.model, num_classes=config.num_classes, **config.model_options.to_dict())


def create_optimizer(config: ml_collections.ConfigDict, model, schedule):
  """The config's optimizer, with zero updates for the layers config.freeze / freeze_first select."""
  return transfer.freeze(optim.create_optimizer(config, schedule), transfer.frozen_layers(model, config))


def image_shape(config) -> Tuple[int, int, int]:
  return (config.image_size, config.image_size, config.channels)


def preprocess_settings(config) -> Dict:
  settings = {"mode": transfer.preprocess_mode(config)}
  if settings["mode"] == "mean_std":
    settings.update(mean=tuple(config.mean), std=tuple(config.std))
  return settings


def augment_settings(config) -> Optional[Dict]:
  settings = config.augment.to_dict()
  return settings if any(settings.values()) else None


def check_model_input(model, config) -> None:
  """Builds the model abstractly, so an input/architecture mismatch fails before any compilation."""
  key = jax.eval_shape(jax.random.PRNGKey, 0)  # even PRNGKey(0) would compile a tiny program
  jax.eval_shape(functools.partial(model.init, train=False), key,
                 jax.ShapeDtypeStruct((1, *image_shape(config)), jnp.float32))


class _RunningMean:
  def __init__(self):
    self.sums, self.count = {}, 0

  def add(self, metrics: Dict):
    self.count += 1
    for key, value in metrics.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)

  def means(self) -> Dict:
    return {key: value / max(self.count, 1) for key, value in self.sums.items()}


def _gradcam_overlays(model, variables, images, preprocess: Dict):
  """(N, H, W, 3) floats in [0, 1]: each uint8 image with its Grad-CAM map for the predicted class over it."""
  from cnnjax import viz  # imports matplotlib: only runs that ask for overlays need it
  inputs = data_lib.preprocess(jnp.asarray(images, jnp.float32), **preprocess)
  targets = jnp.argmax(model.apply(variables, inputs, train=False), axis=-1)
  maps = jax.device_get(explain.gradcam(model, variables, inputs, targets))
  return np.stack([viz.overlay_array(image, heatmap) for image, heatmap in zip(images, maps)])


def _check_finite(metrics: Dict, step: int) -> None:
  if not math.isfinite(float(metrics["loss"])):
    raise FloatingPointError(
        f"loss became {float(metrics['loss'])} at step {step}; lower config.learning_rate, set "
        "config.grad_clip_norm, or config.nonfinite='skip' to skip such steps")


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


def _is_better(monitor: str, value: float, best: Optional[float]) -> bool:
  if not math.isfinite(value):
    return False
  if best is None:
    return True
  return value < best if monitor.endswith("loss") else value > best


def _best_value(history: List[Dict], monitor: str) -> Tuple[Optional[float], int]:
  """The best monitored value so far and how many epochs ago it was reached."""
  best, best_epoch = None, -1
  for record in history:
    if monitor in record and _is_better(monitor, record[monitor], best):
      best, best_epoch = record[monitor], record["epoch"]
  since = history[-1]["epoch"] - best_epoch if history else 0
  return best, since


def load_splits(config: ml_collections.ConfigDict) -> data_lib.Splits:
  """The config's dataset, decoded and split; its class count must match the model's."""
  splits = data_lib.load(config.dataset, image_size=config.image_size, channels=config.channels,
                         validation_split=config.validation_split, seed=config.seed, data_dir=config.data_dir,
                         limit_per_class=config.limit_per_class)
  if len(splits.class_names) != config.num_classes:
    raise ValueError(f"the dataset has {len(splits.class_names)} classes ({', '.join(splits.class_names[:10])}"
                     f"{', ...' if len(splits.class_names) > 10 else ''}) but config.num_classes="
                     f"{config.num_classes}; set --config.num_classes={len(splits.class_names)}")
  return splits


def train_steps_per_epoch(config: ml_collections.ConfigDict, splits: data_lib.Splits) -> int:
  """Full batches in the training split, capped by config.steps_per_epoch."""
  steps = data_lib.num_batches(len(splits.train), config.batch_size, drop_remainder=True)
  if steps == 0:
    raise ValueError(f"the training split has {len(splits.train)} images, fewer than one batch of "
                     f"{config.batch_size}; lower config.batch_size")
  return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Trains `config` into `workdir` (resuming what is there), then evaluates the best weights.

  Returns the evaluation written to eval.json.
  """
  config_lib.validate(config)
  config = transfer.resolve(config)
  is_writer = jax.process_index() == 0
  with workdir_lib.exclusive(workdir, enabled=is_writer):
    if config.phases:
      return transfer.train_phases(config, workdir, train_and_evaluate)
    return _train_and_evaluate(config, workdir, is_writer)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, is_writer: bool) -> Dict:
  workdir_lib.prepare(workdir, config)
  model = create_model(config)
  check_model_input(model, config)

  splits = load_splits(config)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.class_names = list(splits.class_names)
  if is_writer:
    workdir_lib.write_text(workdir, "config.json", config_lib.to_json(config))

  if config.bottleneck.layer:
    return transfer.train_on_bottleneck(config, workdir, model, transfer.initial_variables(model, config),
                                        splits, preprocess_settings(config))
  steps_per_epoch = train_steps_per_epoch(config, splits)
  schedule = optim.create_schedule(config, steps_per_epoch)
  tx = create_optimizer(config, model, schedule)

  mesh = sharding.data_mesh()
  replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = jax.device_put(step_lib.create_train_state(model, tx, image_shape(config), config.seed), replicated)

  summary = models.summary(model, (1, *image_shape(config)), print_fn=lambda line: None)
  if is_writer:
    workdir_lib.write_text(workdir, "summary.txt", summary)
    logging.info("model %s:\n%s", config.model, summary)

  checkpoints = checkpoint_lib.Checkpoints(workdir, config.keep_checkpoints)
  history: List[Dict] = []
  partial = None  # where an interrupted epoch stopped: {'epoch', 'batch', 'sums', 'count', 'seconds'}
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, record = restored
    history, partial = record["history"], record.get("partial")
    where = f"epoch {partial['epoch'] + 1}, batch {partial['batch']}" if partial else f"epoch {len(history)}"
    print(f"resuming {workdir} at {where} (step {int(state.step)})")
  elif config.pretrained:
    state = jax.device_put(state.replace(**transfer.load_pretrained(model, state.variables, config)), replicated)

  train_step = jax.jit(
      functools.partial(step_lib.train_step, model=model, num_classes=config.num_classes,
                        preprocess=preprocess_settings(config), augment=augment_settings(config),
                        label_smoothing=config.label_smoothing, learning_rate_fn=schedule,
                        frozen=transfer.frozen_layers(model, config)),
      in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(
      functools.partial(step_lib.eval_step, model=model, num_classes=config.num_classes,
                        preprocess=preprocess_settings(config)),
      in_shardings=(replicated, batch_sharding), out_shardings=replicated)

  from clu import metric_writers  # imports TensorFlow (seconds): only runs that train need it
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_writer)
  if not history and partial is None:
    # clu flattens nested fields to dotted names ('augment.rotation'); class names are data, not settings.
    writer.write_hparams({k: v for k, v in config.to_dict().items() if k not in config_lib.DERIVED_FIELDS})
  monitor = config.early_stopping.monitor
  validation = splits.validation if splits.validation is not None and len(splits.validation) else None
  explained = (validation if validation is not None else splits.train).images[:config.tensorboard_explain_images]
  epochs_before = len(history)
  probe_images = data_lib.ImageSet(splits.train.images[:config.eval_batch_size],
                                   splits.train.labels[:config.eval_batch_size])
  with _StopRequests() as stop:
    for epoch in range(len(history), config.num_epochs):
      best, since_best = _best_value(history, monitor)
      if config.early_stopping.patience and history and since_best >= config.early_stopping.patience:
        print(f"early stopping: {monitor} has not improved for {since_best} epochs (best {best:.4f})")
        break
      resume = partial if partial and partial["epoch"] == epoch else None
      partial = None

      def save_partial(state, batch_index, running, seconds, epoch=epoch):
        checkpoints.save(state, {"history": history, "partial": {
            "epoch": epoch, "batch": batch_index, "sums": running.sums, "count": running.count,
            "seconds": seconds}}, is_best=False)

      epoch_run = _EpochRun(train_step, splits.train, config, epoch, steps_per_epoch, batch_sharding, is_writer,
                            resume, stop, save_partial)
      state, train_means, seconds = epoch_run.run(state)
      started = time.time() - seconds
      # NaN when every step of the epoch had a non-finite loss (all skipped with config.nonfinite='skip').
      record = {"epoch": epoch, "step": int(state.step), "learning_rate": float(schedule(int(state.step) - 1)),
                "train_loss": train_means.get("loss", math.nan),
                "train_accuracy": train_means.get("accuracy", math.nan)}
      if validation is not None:
        val = evaluation.evaluate(eval_step, state.variables, validation, config.eval_batch_size, batch_sharding)
        record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
      record["seconds"] = time.time() - started
      history.append(record)
      # Weights that compute NaN/inf are never the best. Without validation the train loss, measured before
      # each update, lags the weights by a step: the new weights' loss on a training batch must be finite too.
      if validation is None:
        probe = evaluation.evaluate(eval_step, state.variables, probe_images, config.eval_batch_size, batch_sharding)
        is_best = math.isfinite(record["train_loss"]) and math.isfinite(probe["loss"])
      else:
        is_best = _is_better(monitor, record.get(monitor, math.nan), best)
      is_best = is_best and bool(_all_finite(state.variables))
      checkpoints.save(state, {"history": history}, is_best=is_best)
      # Every process computes the overlays: the variables may be sharded across hosts.
      overlays = (_gradcam_overlays(model, state.variables, explained, preprocess_settings(config))
                  if len(explained) else None)
      if is_writer:
        workdir_lib.write_history(workdir, history)
        writer.write_scalars(int(state.step), {k: v for k, v in record.items() if k not in ("epoch", "step")})
        if overlays is not None:
          writer.write_images(int(state.step), {"gradcam": overlays})
        writer.flush()
      print(_epoch_line(record, config.num_epochs))
      stop.raise_if_requested(int(state.step))
  if is_writer and history and len(history) == epochs_before:
    # Nothing was left to train (a rerun after the last checkpoint): metrics.jsonl and the curves may lack
    # that epoch if writing them failed (a full disk), so they are written again from the checkpoint's record.
    workdir_lib.write_history(workdir, history)

  best_restored = checkpoints.restore_best(state) or checkpoints.restore_latest(state)
  checkpoints.close()
  writer.close()
  final_state = best_restored[0] if best_restored else state
  # A dataset's own test split (celeb_a) reports the weights validation chose; otherwise the validation split.
  split_name, eval_split = (("test", splits.test) if splits.test is not None else
                            ("validation", validation) if validation is not None else
                            ("train (no validation split)", splits.train))
  results = evaluation.evaluate(eval_step, final_state.variables, eval_split, config.eval_batch_size,
                                batch_sharding, class_names=splits.class_names)
  results["split"] = split_name
  results["epoch"] = best_restored[1]["history"][-1]["epoch"] if best_restored else None
  if is_writer:
    workdir_lib.write_outputs(workdir, history, results, splits.class_names)
  best_epoch = "-" if results["epoch"] is None else results["epoch"] + 1  # 1-based, as the epoch lines
  print(f"eval ({results['split']}, weights of epoch {best_epoch}): loss {results['loss']:.4f}, "
        f"accuracy {results['accuracy']:.4f}; outputs in {workdir}")
  return results


class Interrupted(Exception):
  """SIGTERM or Ctrl-C: the run stopped after a step and saved a checkpoint to resume from."""


class _StopRequests:
  """Turns SIGTERM / SIGINT into a request the loop honours after the current step; a second one aborts."""

  def __init__(self):
    self.requested = None

  def __enter__(self):
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested is not None:
      raise KeyboardInterrupt("second stop request: abandoning the run without a new checkpoint")
    self.requested = signal.Signals(signum).name
    print(f"\n{self.requested} received: finishing the current step and saving a checkpoint", flush=True)

  def raise_if_requested(self, step: int):
    if self.requested is not None:
      raise Interrupted(f"stopped by {self.requested} at step {step} with a checkpoint saved; rerun the same "
                        "command to resume")

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    return False


class _EpochRun:
  """One training epoch (or what is left of it); metrics are fetched one step late so the host never stalls
  the device, and a checkpoint is saved mid-epoch every `config.checkpoint_every_steps` or on a stop request."""

  def __init__(self, train_step, images: data_lib.ImageSet, config, epoch: int, steps: int, batch_sharding,
               show_progress: bool, resume: Optional[Dict], stop: _StopRequests, save_partial):
    self.train_step, self.images, self.config, self.epoch, self.steps = train_step, images, config, epoch, steps
    self.batch_sharding, self.stop, self.save_partial = batch_sharding, stop, save_partial
    self.running = _RunningMean()
    self.start_batch, self.seconds_before = 0, 0.0
    if resume:
      self.start_batch, self.seconds_before = resume["batch"], resume["seconds"]
      self.running.sums, self.running.count = dict(resume["sums"]), resume["count"]
    self.progress = tqdm(total=steps, initial=self.start_batch, desc=f"epoch {epoch + 1}/{config.num_epochs}",
                         disable=not show_progress, leave=False, dynamic_ncols=True)

  def run(self, state):
    started = time.time()
    batches = data_lib.batches(self.images, batch_size=self.config.batch_size, seed=self.config.seed,
                               epoch=self.epoch, shuffle=True, start_batch=self.start_batch,
                               process_index=jax.process_index(), process_count=jax.process_count())
    every = self.config.checkpoint_every_steps
    pending = None
    step_number = int(state.step)
    for batch_index, batch in zip(range(self.start_batch, self.steps), batches):
      state, metrics = self.train_step(state, sharding.global_batch(batch, self.batch_sharding))
      if pending is not None:
        self._record(*pending)
      pending = (step_number, metrics)
      step_number += 1
      done = batch_index + 1
      if done < self.steps and (self.stop.requested or (every and step_number % every == 0)):
        self._record(*pending)
        pending = None
        self.save_partial(state, done, self.running, self.seconds_before + time.time() - started)
        self.stop.raise_if_requested(step_number)
    if pending is not None:
      self._record(*pending)
    self.progress.close()
    return state, self.running.means(), self.seconds_before + time.time() - started

  def _record(self, step_number: int, metrics) -> None:
    metrics = jax.device_get(metrics)
    if self.config.nonfinite == "stop":
      _check_finite(metrics, step_number)
    if math.isfinite(float(metrics["loss"])):
      self.running.add({"loss": metrics["loss"], "accuracy": metrics["accuracy"]})
    self.progress.update(1)
    means = self.running.means()
    if means:
      self.progress.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.4f}", refresh=False)


def _epoch_line(record: Dict, num_epochs: int) -> str:
  parts = [f"epoch {record['epoch'] + 1}/{num_epochs}", f"loss {record['train_loss']:.4f}",
           f"accuracy {record['train_accuracy']:.4f}"]
  if "val_loss" in record:
    parts += [f"val_loss {record['val_loss']:.4f}", f"val_accuracy {record['val_accuracy']:.4f}"]
  parts += [f"lr {record['learning_rate']:.3g}", f"{record['seconds']:.1f}s"]
  return " - ".join(parts)


def restore(workdir: str):
  """(model, variables, config) of a train.py run: the best checkpoint, else the latest."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"{workdir} is not a train.py workdir (no config.json); pass the --workdir of a run")
  try:
    with open(config_path) as f:
      config = config_lib.from_json(f.read())
    if config.get("phases"):  # a phased run: the weights of its last phase
      return restore(os.path.join(workdir, f"phase{len(config.phases)}"))
    model = create_model(config)
    tx = create_optimizer(config, model, optim.create_schedule(config, 1))
    abstract = jax.eval_shape(lambda: step_lib.create_train_state(model, tx, image_shape(config), config.seed))
    keep = config.keep_checkpoints
  except (ValueError, AttributeError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
    raise ValueError(f"{config_path} is not a usable train.py config ({' '.join(str(error).split())[:300]}); "
                     "restore the workdir's config.json from a copy of the run") from None
  abstract = jax.tree_util.tree_map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=jax.sharding.SingleDeviceSharding(
          jax.local_devices()[0])), abstract)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):  # reading must not create directories
    raise ValueError(f"{workdir} has no checkpoint yet; train first: python train.py --workdir {workdir} ...")
  checkpoints = checkpoint_lib.Checkpoints(workdir, keep)
  try:
    restored = checkpoints.restore_best(abstract) or checkpoints.restore_latest(abstract)
  finally:
    checkpoints.close()
  if restored is None:
    raise ValueError(f"{workdir} has no checkpoint yet; train first: python train.py --workdir {workdir} ...")
  return model, restored[0].variables, config
