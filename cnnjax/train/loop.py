"""`train_and_evaluate(config, workdir)`: the whole run, resumable; `restore(workdir)` for what comes after."""
import functools
import json
import math
import os
import time
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import metric_writers
from tqdm import tqdm

from cnnjax import data as data_lib
from cnnjax import models
from cnnjax.train import checkpoint as checkpoint_lib
from cnnjax.train import config as config_lib
from cnnjax.train import evaluation
from cnnjax.train import optim
from cnnjax.train import sharding
from cnnjax.train import step as step_lib
from cnnjax.train import workdir as workdir_lib


def create_model(config: ml_collections.ConfigDict):
  return models.create(config.model, num_classes=config.num_classes, **config.model_options.to_dict())


def image_shape(config) -> Tuple[int, int, int]:
  return (config.image_size, config.image_size, config.channels)


def preprocess_settings(config) -> Dict:
  settings = {"mode": config.preprocess}
  if config.preprocess == "mean_std":
    settings.update(mean=tuple(config.mean), std=tuple(config.std))
  return settings


def augment_settings(config) -> Optional[Dict]:
  settings = config.augment.to_dict()
  return settings if any(settings.values()) else None


def check_model_input(model, config) -> None:
  """Builds the model abstractly, so an input/architecture mismatch fails before any compilation."""
  jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                 jnp.zeros((1, *image_shape(config)), jnp.float32))


class _RunningMean:
  def __init__(self):
    self.sums, self.count = {}, 0

  def add(self, metrics: Dict):
    self.count += 1
    for key, value in metrics.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)

  def means(self) -> Dict:
    return {key: value / max(self.count, 1) for key, value in self.sums.items()}


def _check_finite(metrics: Dict, step: int) -> None:
  if not math.isfinite(float(metrics["loss"])):
    raise FloatingPointError(
        f"loss became {float(metrics['loss'])} at step {step}; lower config.learning_rate, set "
        "config.grad_clip_norm, or config.nonfinite='skip' to skip such steps")


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Trains `config` into `workdir` (resuming what is there), then evaluates the best weights.

  Returns the evaluation written to eval.json.
  """
  config_lib.validate(config)
  is_writer = jax.process_index() == 0
  with workdir_lib.exclusive(workdir, enabled=is_writer):
    return _train_and_evaluate(config, workdir, is_writer)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, is_writer: bool) -> Dict:
  workdir_lib.prepare(workdir, config)
  model = create_model(config)
  check_model_input(model, config)

  splits = data_lib.load(config.dataset, image_size=config.image_size, channels=config.channels,
                         validation_split=config.validation_split, seed=config.seed, data_dir=config.data_dir,
                         limit_per_class=config.limit_per_class)
  if len(splits.class_names) != config.num_classes:
    raise ValueError(f"the dataset has {len(splits.class_names)} classes ({', '.join(splits.class_names[:10])}"
                     f"{', ...' if len(splits.class_names) > 10 else ''}) but config.num_classes="
                     f"{config.num_classes}; set --config.num_classes={len(splits.class_names)}")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.class_names = list(splits.class_names)
  if is_writer:
    workdir_lib.write_text(workdir, "config.json", config_lib.to_json(config))

  steps_per_epoch = data_lib.num_batches(len(splits.train), config.batch_size, drop_remainder=True)
  if steps_per_epoch == 0:
    raise ValueError(f"the training split has {len(splits.train)} images, fewer than one batch of "
                     f"{config.batch_size}; lower config.batch_size")
  if config.steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
  schedule = optim.create_schedule(config, steps_per_epoch)
  tx = optim.create_optimizer(config, schedule)

  mesh = sharding.data_mesh()
  replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = jax.device_put(step_lib.create_train_state(model, tx, image_shape(config), config.seed), replicated)

  summary = models.summary(model, (1, *image_shape(config)), print_fn=lambda line: None)
  if is_writer:
    workdir_lib.write_text(workdir, "summary.txt", summary)
    logging.info("model %s:\n%s", config.model, summary)

  checkpoints = checkpoint_lib.Checkpoints(workdir, config.keep_checkpoints)
  history: List[Dict] = []
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, record = restored
    history = record["history"]
    print(f"resuming {workdir} after epoch {len(history)} (step {int(state.step)})")

  train_step = jax.jit(
      functools.partial(step_lib.train_step, model=model, num_classes=config.num_classes,
                        preprocess=preprocess_settings(config), augment=augment_settings(config),
                        label_smoothing=config.label_smoothing, learning_rate_fn=schedule),
      in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(
      functools.partial(step_lib.eval_step, model=model, num_classes=config.num_classes,
                        preprocess=preprocess_settings(config)),
      in_shardings=(replicated, batch_sharding), out_shardings=replicated)

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_writer)
  if not history:
    writer.write_hparams({k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))})
  monitor = config.early_stopping.monitor
  validation = splits.validation
  for epoch in range(len(history), config.num_epochs):
    best, since_best = _best_value(history, monitor)
    if config.early_stopping.patience and history and since_best >= config.early_stopping.patience:
      print(f"early stopping: {monitor} has not improved for {since_best} epochs (best {best:.4f})")
      break
    started = time.time()
    train_metrics = _train_epoch(train_step, state, splits.train, config, epoch, steps_per_epoch, batch_sharding,
                                 is_writer)
    state, train_means = train_metrics
    record = {"epoch": epoch, "step": int(state.step), "learning_rate": float(schedule(int(state.step) - 1)),
              "train_loss": train_means["loss"], "train_accuracy": train_means["accuracy"]}
    if validation is not None and len(validation):
      val = evaluation.evaluate(eval_step, state.variables, validation, config.eval_batch_size, batch_sharding)
      record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    record["seconds"] = time.time() - started
    history.append(record)
    is_best = validation is None or _is_better(monitor, record.get(monitor, math.nan), best)
    checkpoints.save(state, {"history": history}, is_best=is_best)
    if is_writer:
      workdir_lib.write_history(workdir, history)
      writer.write_scalars(int(state.step), {k: v for k, v in record.items() if k not in ("epoch", "step")})
      writer.flush()
    print(_epoch_line(record, config.num_epochs))

  best_restored = checkpoints.restore_best(state) or checkpoints.restore_latest(state)
  checkpoints.close()
  writer.close()
  final_state = best_restored[0] if best_restored else state
  eval_split = validation if validation is not None and len(validation) else splits.train
  results = evaluation.evaluate(eval_step, final_state.variables, eval_split, config.eval_batch_size,
                                batch_sharding, class_names=splits.class_names)
  results["split"] = "validation" if eval_split is validation else "train (no validation split)"
  results["epoch"] = (best_restored[1]["history"][-1]["epoch"] if best_restored else None)
  if is_writer:
    workdir_lib.write_outputs(workdir, history, results, splits.class_names)
  print(f"eval ({results['split']}, weights of epoch {results['epoch']}): loss {results['loss']:.4f}, "
        f"accuracy {results['accuracy']:.4f}; outputs in {workdir}")
  return results


def _train_epoch(train_step, state, images: data_lib.ImageSet, config, epoch: int, steps: int,
                 batch_sharding, show_progress: bool):
  """Runs one epoch; metrics are fetched one step late so the host never stalls the device."""
  running = _RunningMean()
  batches = data_lib.batches(images, batch_size=config.batch_size, seed=config.seed, epoch=epoch, shuffle=True,
                             process_index=jax.process_index(), process_count=jax.process_count())
  progress = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.num_epochs}", disable=not show_progress,
                  leave=False, dynamic_ncols=True)
  pending = None
  for _, batch in zip(range(steps), batches):
    step_number = int(state.step) if pending is None else pending[0] + 1
    state, metrics = train_step(state, sharding.global_batch(batch, batch_sharding))
    if pending is not None:
      _record(pending, running, progress, config)
    pending = (step_number, metrics)
  if pending is not None:
    _record(pending, running, progress, config)
  progress.close()
  return state, running.means()


def _record(pending, running: _RunningMean, progress, config) -> None:
  step_number, metrics = pending
  metrics = jax.device_get(metrics)
  if config.nonfinite == "stop":
    _check_finite(metrics, step_number)
  if math.isfinite(float(metrics["loss"])):
    running.add({"loss": metrics["loss"], "accuracy": metrics["accuracy"]})
  progress.update(1)
  means = running.means()
  if means:
    progress.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.4f}", refresh=False)


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
  with open(config_path) as f:
    config = config_lib.from_json(f.read())
  model = create_model(config)
  tx = optim.create_optimizer(config, optim.create_schedule(config, 1))
  abstract = jax.eval_shape(lambda: step_lib.create_train_state(model, tx, image_shape(config), config.seed))
  abstract = jax.tree_util.tree_map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=jax.sharding.SingleDeviceSharding(
          jax.local_devices()[0])), abstract)
  checkpoints = checkpoint_lib.Checkpoints(workdir, config.keep_checkpoints)
  try:
    restored = checkpoints.restore_best(abstract) or checkpoints.restore_latest(abstract)
  finally:
    checkpoints.close()
  if restored is None:
    raise ValueError(f"{workdir} has no checkpoint yet; train first: python train.py --workdir {workdir} ...")
  return model, restored[0].variables, config
