"""The periodic hooks of a training run (see `runner.run`): metrics and the progress bar, evaluation at each epoch
end, checkpoints (each epoch, every `config.checkpoint_every_steps`, and on a stop request), metrics.jsonl, plots
and TensorBoard, early stopping. They share one `Progress`, the part of a run's position the step does not give.
"""
import dataclasses
import math
import time
from typing import Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
from tqdm import tqdm

from cnnjax.train import runner
from cnnjax.train import workdir as workdir_lib


@dataclasses.dataclass
class Progress:
  """One record per finished epoch and the running sums of the current one; saved in every checkpoint."""
  history: List[Dict]
  sums: Dict[str, float]
  count: int
  started: float  # time.time() at which the current epoch would have started, had it run uninterrupted
  # Where a streamed training set's readers were at the checkpoint (loop.TrainBatches.state); None otherwise.
  input: Optional[Dict] = None

  @classmethod
  def from_record(cls, record: Optional[Dict]) -> "Progress":
    """From a checkpoint's record; 'partial' is where checkpoints written before the step-indexed loop kept the
    sums of an interrupted epoch (its epoch and batch are implied by the step); records without 'input' (in-memory
    runs, checkpoints from before streaming) place the data by the step alone."""
    record = record or {}
    running = record.get("epoch_metrics") or record.get("partial") or {}
    return cls(list(record.get("history", [])), dict(running.get("sums", {})), int(running.get("count", 0)),
               time.time() - float(running.get("seconds", 0.0)), record.get("input"))

  def to_record(self) -> Dict:
    return {"history": self.history,
            "epoch_metrics": {"sums": self.sums, "count": self.count, "seconds": time.time() - self.started}}

  def add(self, metrics: Dict) -> None:
    self.count += 1
    for key, value in metrics.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)

  def means(self) -> Dict:
    return {key: value / max(self.count, 1) for key, value in self.sums.items()}

  def next_epoch(self) -> None:
    self.sums, self.count, self.started = {}, 0, time.time()


def is_better(monitor: str, value: float, best: Optional[float]) -> bool:
  if not math.isfinite(value):
    return False
  if best is None:
    return True
  return value < best if monitor.endswith("loss") else value > best


def best_value(history: List[Dict], monitor: str):
  """The best monitored value so far and how many epochs ago it was reached."""
  best, best_epoch = None, -1
  for record in history:
    if monitor in record and is_better(monitor, record[monitor], best):
      best, best_epoch = record[monitor], record["epoch"]
  since = history[-1]["epoch"] - best_epoch if history else 0
  return best, since


@jax.jit
def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


class EpochEnd(runner.Hook):
  """Due at the last step of every epoch."""

  def __init__(self, steps_per_epoch: int):
    self.steps_per_epoch = steps_per_epoch

  def due(self, done: int) -> bool:
    return done % self.steps_per_epoch == 0


class Metrics(EpochEnd):
  """Running means of the epoch's finite losses and accuracies, shown on a progress bar; a non-finite loss
  stops the run with its step unless config.nonfinite='skip'."""

  def __init__(self, progress: Progress, steps_per_epoch: int, num_epochs: int, *, stop_on_nonfinite: bool,
               show: bool):
    super().__init__(steps_per_epoch)
    self.progress, self.num_epochs, self.stop_on_nonfinite, self.show = progress, num_epochs, stop_on_nonfinite, show
    self.bar = None

  def on_metrics(self, step: int, metrics: Dict) -> None:
    loss = float(metrics["loss"])
    if self.stop_on_nonfinite and not math.isfinite(loss):
      raise FloatingPointError(
          f"loss became {loss} at step {step}; lower config.learning_rate, set config.grad_clip_norm, or "
          "config.nonfinite='skip' to skip such steps")
    if math.isfinite(loss):
      self.progress.add({"loss": metrics["loss"], "accuracy": metrics["accuracy"]})
    if self.bar is None:
      epoch, batch = divmod(step, self.steps_per_epoch)
      self.bar = tqdm(total=self.steps_per_epoch, initial=batch, desc=f"epoch {epoch + 1}/{self.num_epochs}",
                      disable=not self.show, leave=False, dynamic_ncols=True)
    self.bar.update(1)
    means = self.progress.means()
    if means:
      self.bar.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.4f}", refresh=False)

  def after_step(self, done: int, state) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


class Evaluation(EpochEnd):
  """The epoch's record (train means, validation loss and accuracy, learning rate, seconds) appended to the
  history, and whether its weights are the best so far. Weights that compute NaN/inf are never the best; without
  validation the train loss, measured before each update, lags the weights by a step, so the new weights' loss on
  a training batch (`probe`) must be finite too."""

  def __init__(self, progress: Progress, steps_per_epoch: int, *, schedule: Callable, monitor: str,
               validate: Optional[Callable], probe: Callable):
    super().__init__(steps_per_epoch)
    self.progress, self.schedule, self.monitor, self.validate, self.probe = progress, schedule, monitor, validate, probe
    self.is_best = False

  def after_step(self, done: int, state) -> None:
    means = self.progress.means()
    # NaN when every step of the epoch had a non-finite loss (all skipped with config.nonfinite='skip').
    record = {"epoch": done // self.steps_per_epoch - 1, "step": done,
              "learning_rate": float(self.schedule(done - 1)),
              "train_loss": means.get("loss", math.nan), "train_accuracy": means.get("accuracy", math.nan)}
    best, _ = best_value(self.progress.history, self.monitor)
    if self.validate is not None:
      scores = self.validate(state.variables)
      record.update(val_loss=scores["loss"], val_accuracy=scores["accuracy"])
      is_best = is_better(self.monitor, record.get(self.monitor, math.nan), best)
    else:
      is_best = math.isfinite(record["train_loss"]) and math.isfinite(self.probe(state.variables)["loss"])
    record["seconds"] = time.time() - self.progress.started
    self.progress.history.append(record)
    self.progress.next_epoch()
    self.is_best = is_best and bool(all_finite(state.variables))


class Checkpointing(runner.Hook):
  """The latest checkpoint (and the best) at each epoch end, after `evaluation`; mid-epoch every `every` steps
  and when a stop is requested, with the epoch's running sums, so a resumed epoch reports what an uninterrupted
  one would have, and `input_state()` (a streamed input's reader positions, or None) under 'input'."""

  def __init__(self, checkpoints, progress: Progress, evaluation: Evaluation, *, every: int,
               stop: runner.StopRequests, input_state: Callable[[], Optional[Dict]] = lambda: None):
    self.checkpoints, self.progress, self.evaluation, self.every, self.stop = checkpoints, progress, evaluation, every, stop
    self.input_state = input_state

  def due(self, done: int) -> bool:
    return (self.evaluation.due(done) or self.stop.requested is not None
            or bool(self.every and done % self.every == 0))

  def after_step(self, done: int, state) -> None:
    epoch_end = self.evaluation.due(done)
    record = {"history": self.progress.history}
    if not epoch_end:  # the next epoch starts at its first batch: only a checkpoint inside one needs more
      record = self.progress.to_record()
      input_state = self.input_state()
      if input_state is not None:
        record["input"] = input_state
    self.checkpoints.save(state, record, is_best=epoch_end and self.evaluation.is_best)


class Report(EpochEnd):
  """metrics.jsonl, the loss/accuracy plots, TensorBoard scalars (and Grad-CAM overlays) and one printed line
  per epoch. Only process 0 writes; every process computes the overlays (variables may be sharded)."""

  def __init__(self, progress: Progress, steps_per_epoch: int, *, workdir: str, writer, num_epochs: int,
               overlays: Optional[Callable], is_writer: bool):
    super().__init__(steps_per_epoch)
    self.progress, self.workdir, self.writer, self.num_epochs = progress, workdir, writer, num_epochs
    self.overlays, self.is_writer = overlays, is_writer

  def after_step(self, done: int, state) -> None:
    record = self.progress.history[-1]
    images = self.overlays(state.variables) if self.overlays is not None else None
    if self.is_writer:
      workdir_lib.write_history(self.workdir, self.progress.history)
      self.writer.write_scalars(done, {k: v for k, v in record.items() if k not in ("epoch", "step")})
      if images is not None:
        self.writer.write_images(done, {"gradcam": images})
      self.writer.flush()
    print(epoch_line(record, self.num_epochs))


def epoch_line(record: Dict, num_epochs: int) -> str:
  parts = [f"epoch {record['epoch'] + 1}/{num_epochs}", f"loss {record['train_loss']:.4f}",
           f"accuracy {record['train_accuracy']:.4f}"]
  if "val_loss" in record:
    parts += [f"val_loss {record['val_loss']:.4f}", f"val_accuracy {record['val_accuracy']:.4f}"]
  parts += [f"lr {record['learning_rate']:.3g}", f"{record['seconds']:.1f}s"]
  return " - ".join(parts)


class EarlyStopping(runner.Hook):
  """Stops once `monitor` has not improved for `patience` epochs (0: never); checked at the start too, so a
  resumed run that had stopped early stays stopped."""

  def __init__(self, progress: Progress, monitor: str, patience: int):
    self.progress, self.monitor, self.patience = progress, monitor, patience

  def stop_reason(self) -> Optional[str]:
    best, since_best = best_value(self.progress.history, self.monitor)
    if self.patience and self.progress.history and since_best >= self.patience:
      return f"early stopping: {self.monitor} has not improved for {since_best} epochs (best {best:.4f})"
    return None
