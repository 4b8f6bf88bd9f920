"""The training loop: one loop over the global step with periodic hooks, the shape of flax's examples/imagenet.

The step is the whole position of a run: epoch e and batch b of step s are `divmod(s, steps_per_epoch)`, and
batches are a pure function of (seed, epoch, start_batch), so a run restored at any step replays exactly what an
uninterrupted run would have seen. Everything else a run does between steps (metrics, evaluation, checkpoints,
TensorBoard, early stopping, stop requests, the LR finder's divergence test) is a `Hook`.
"""
import signal
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import jax


class Interrupted(Exception):
  """SIGTERM or Ctrl-C: the run stopped after a step and saved a checkpoint to resume from."""


class Hook:
  """Something the loop does between steps; every method is optional.

  - `on_metrics(step, metrics)`: the host metrics of step `step` (0-based: the state's step before it). They
    arrive one step late, so the host never stalls the device, but always before any hook that is due runs.
  - `due(done)` / `after_step(done, state)`: runs after the step that brought the run to `done` steps.
  - `stop_reason()`: a reason to end training now (checked at the start and after due hooks ran), or None.
  """

  def on_metrics(self, step: int, metrics: Dict) -> None:
    pass

  def due(self, done: int) -> bool:
    return False

  def after_step(self, done: int, state) -> None:
    pass

  def stop_reason(self) -> Optional[str]:
    return None


def _stop_reason(hooks: Sequence[Hook]) -> Optional[str]:
  return next((reason for reason in (hook.stop_reason() for hook in hooks) if reason), None)


def run(state, train_step: Callable, batches: Callable[[int, int], Iterator[Dict]], *, steps_per_epoch: int,
        num_steps: int, hooks: Sequence[Hook]) -> Tuple[Any, Optional[str]]:
  """Trains from `state.step` up to `num_steps`.

  Args:
    state: anything with a `step`; `train_step(state, batch) -> (state, metrics)`.
    batches: `batches(epoch, start_batch)` iterates that epoch's global batches from `start_batch` on.
    steps_per_epoch: batches per epoch.
    num_steps: the step to stop at.
    hooks: run in this order between steps.
  Returns:
    (the last state, the reason a hook stopped training early or None).
  """
  step = int(jax.device_get(state.step))
  reason = _stop_reason(hooks)
  pending, iterator = None, None
  while step < num_steps and reason is None:
    epoch, batch_index = divmod(step, steps_per_epoch)
    if iterator is None or batch_index == 0:
      iterator = batches(epoch, batch_index)
    state, metrics = train_step(state, next(iterator))
    if pending is not None:
      _deliver(hooks, *pending)
    pending, step = (step, metrics), step + 1
    due = [hook for hook in hooks if hook.due(step)]
    if due:
      _deliver(hooks, *pending)
      pending = None
      for hook in due:
        hook.after_step(step, state)
      reason = _stop_reason(hooks)
  if pending is not None:
    _deliver(hooks, *pending)
  return state, reason


def _deliver(hooks: Sequence[Hook], step: int, metrics) -> None:
  metrics = jax.device_get(metrics)
  for hook in hooks:
    hook.on_metrics(step, metrics)


class StopRequests(Hook):
  """Turns SIGTERM / SIGINT into a request honoured after the current step (once the hooks before this one, such
  as the checkpoint, have run); a second request aborts at once."""

  def __init__(self):
    self.requested = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested is not None:
      raise KeyboardInterrupt("second stop request: abandoning the run without a new checkpoint")
    self.requested = signal.Signals(signum).name
    print(f"\n{self.requested} received: finishing the current step and saving a checkpoint", flush=True)

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    return False

  def due(self, done: int) -> bool:
    return self.requested is not None

  def after_step(self, done: int, state) -> None:
    raise Interrupted(f"stopped by {self.requested} at step {done} with a checkpoint saved; rerun the same "
                      "command to resume")
