"""Training: schedules against Keras's formulas, step equivalence across jit/sharded/pmap, train.py runs,
resume, restore and config errors."""
import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cnnjax import data as data_lib
from cnnjax import models
from cnnjax.train import config as config_lib
from cnnjax.train import experiment
from cnnjax.train import loop
from cnnjax.train import optim
from cnnjax.train import runner
from cnnjax.train import sharding
from cnnjax.train import step as step_lib
from cnnjax.train import weights
import conftest

REPO = Path(__file__).resolve().parents[1]


def tiny_config(image_folder, **overrides):
  return conftest.tiny_config(image_folder, **{"num_epochs": 2, "validation_split": 0.25, **overrides})


# --- schedules -------------------------------------------------------------------------------------------

def test_piecewise_schedule_is_the_tutorials_lr_schedule():
  config = config_lib.default_config()
  config.schedule, config.learning_rate, config.lr_drops = "piecewise", 1e-4, ((5, 5e-5), (10, 3e-5))
  steps_per_epoch = 7
  schedule = optim.create_schedule(config, steps_per_epoch)

  def keras_lr_schedule(epoch):  # the tutorial's function, called by Keras with 0-based epochs
    lrate = 0.0001
    if epoch > 5:
      lrate = 0.00005
    if epoch > 10:
      lrate = 0.00003
    return lrate
  for epoch in range(14):
    for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):
      assert float(schedule(step)) == pytest.approx(keras_lr_schedule(epoch), rel=1e-6)


def test_inverse_time_schedule_is_keras_decay_per_iteration():
  config = config_lib.default_config()
  config.schedule, config.learning_rate, config.num_epochs = "inverse_time", 0.01, 50
  schedule = optim.create_schedule(config, steps_per_epoch=10)
  decay = 0.01 / 50
  for iterations in (0, 1, 10, 499):
    assert float(schedule(iterations)) == pytest.approx(0.01 / (1 + decay * iterations), rel=1e-6)


def test_warmup_cosine_and_onecycle_shapes():
  config = config_lib.default_config()
  config.num_epochs, config.learning_rate = 4, 0.1
  config.schedule, config.warmup_epochs = "warmup_cosine", 1.0
  schedule = optim.create_schedule(config, steps_per_epoch=10)
  assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(0.1)
  assert float(schedule(39)) < 0.01
  config.schedule = "onecycle"
  schedule = optim.create_schedule(config, steps_per_epoch=10)
  peak = max(float(schedule(step)) for step in range(40))
  assert peak == pytest.approx(0.1, rel=1e-3) and float(schedule(0)) < 0.01 and float(schedule(39)) < 0.001


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_lowers_a_quadratic(name):
  config = config_lib.default_config()
  config.optimizer, config.learning_rate, config.weight_decay = name, 0.05, 1e-4
  tx = optim.create_optimizer(config, optim.create_schedule(config, 1))
  params = {"w": jnp.array([3.0, -2.0])}
  opt_state = tx.init(params)
  for _ in range(50):
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
  assert float(jnp.sum(params["w"] ** 2)) < 13.0 * 0.5


# --- one step, three ways -----------------------------------------------------------------------------------

def test_single_device_sharded_and_pmap_steps_agree():
  assert jax.device_count() == 4, "conftest forces 4 CPU devices"
  model = models.create("simple_cnn_bn", num_classes=10, dropout=0.0)
  config = config_lib.default_config()
  config.optimizer, config.learning_rate = "sgd", 0.05
  tx = optim.create_optimizer(config, optim.create_schedule(config, 1))
  state = step_lib.create_train_state(model, tx, (16, 16, 3), seed=0)
  rng = np.random.default_rng(1)
  batch = {"images": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
           "labels": rng.integers(0, 10, (8,)).astype(np.int32)}
  step = functools.partial(step_lib.train_step, model=model, num_classes=10, preprocess={"mode": "rescale"})

  single_state, single_metrics = jax.jit(step)(state, batch)

  mesh = sharding.data_mesh()
  replicated, batch_sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  sharded_step = jax.jit(step, in_shardings=(replicated, batch_sharded), out_shardings=(replicated, replicated))
  sharded_state, _ = sharded_step(jax.device_put(state, replicated), sharding.global_batch(batch, batch_sharded))
  assert len(sharding.global_batch(batch, batch_sharded)["images"].sharding.device_set) == 4

  pmap_model = model.clone(axis_name="batch")
  pmap_step = jax.pmap(functools.partial(step_lib.train_step, model=pmap_model, num_classes=10,
                                         preprocess={"mode": "rescale"}, axis_name="batch"), axis_name="batch")
  per_device = jax.tree_util.tree_map(lambda x: x.reshape(4, 2, *x.shape[1:]), batch)
  pmap_state, pmap_metrics = pmap_step(jax.tree_util.tree_map(lambda x: jnp.stack([x] * 4), state), per_device)
  pmap_state = jax.tree_util.tree_map(lambda x: x[0], pmap_state)

  for other in (sharded_state, pmap_state):
    for key in ("params", "batch_stats"):
      expected, actual = getattr(single_state, key), getattr(other, key)
      jax.tree_util.tree_map(lambda e, a: np.testing.assert_allclose(a, e, atol=1e-5, rtol=1e-5), expected, actual)
  assert float(pmap_metrics["loss"][0]) == pytest.approx(float(single_metrics["loss"]), rel=1e-5)
  # The step changed something, so the comparison above was not vacuous.
  assert not np.allclose(single_state.batch_stats["bn"]["mean"] if "bn" in single_state.batch_stats else
                         jax.tree_util.tree_leaves(single_state.batch_stats)[0],
                         jax.tree_util.tree_leaves(state.batch_stats)[0])


def test_mixup_gives_each_image_and_its_target_the_same_partner_and_weight():
  lam, partner = step_lib.mixup_weights(jax.random.PRNGKey(3), 8, alpha=0.4)
  images = jnp.arange(8, dtype=jnp.float32)[:, None, None, None] * jnp.ones((8, 2, 2, 3))  # image i is all i
  targets = jax.nn.one_hot(jnp.arange(8), 8)  # image i is class i
  mixed_images, mixed_targets = step_lib.mix(images, lam, partner), step_lib.mix(targets, lam, partner)
  assert 0 < float(lam) < 1 and sorted(np.asarray(partner).tolist()) == list(range(8))
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
  # Each mixed image's value, read back through its target distribution, is the image it was mixed from.
  np.testing.assert_allclose(mixed_images[:, 0, 0, 0], mixed_targets @ jnp.arange(8.0), rtol=1e-5, atol=1e-5)
  assert not np.array_equal(np.asarray(partner), np.arange(8))


def test_mixup_step_mixes_only_what_differs():
  model = models.create("simple_cnn_bn", num_classes=10, dropout=0.0)
  config = config_lib.default_config()
  tx = optim.create_optimizer(config, optim.create_schedule(config, 1))
  state = step_lib.create_train_state(model, tx, (16, 16, 3), seed=0)
  rng = np.random.default_rng(1)
  distinct = {"images": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
              "labels": rng.integers(0, 10, (8,)).astype(np.int32)}
  same = {"images": np.repeat(distinct["images"][:1], 8, 0), "labels": np.repeat(distinct["labels"][:1], 8)}

  def loss(batch, alpha):
    step = functools.partial(step_lib.train_step, model=model, num_classes=10, preprocess={"mode": "rescale"},
                             label_smoothing=0.1, mixup_alpha=alpha)
    _, metrics = jax.jit(step)(state, batch)
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0
    return float(metrics["loss"])

  # A batch of one image and label is its own mix: the loss is unchanged; distinct images are mixed.
  assert loss(same, 0.4) == pytest.approx(loss(same, 0.0), rel=1e-5)
  assert abs(loss(distinct, 0.4) - loss(distinct, 0.0)) > 1e-3


def test_test_time_flip_scores_the_mean_softmax_of_each_image_and_its_mirror():
  model = models.create("simple_cnn_bn", num_classes=10, dropout=0.0)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  rng = np.random.default_rng(2)
  batch = {"images": rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8),
           "labels": rng.integers(0, 10, (6,)).astype(np.int32), "mask": np.array([1, 1, 1, 1, 1, 0], np.float32)}

  def sums(batch, flip):
    step = functools.partial(step_lib.eval_step, model=model, num_classes=10, preprocess={"mode": "rescale"},
                             test_time_flip=flip)
    return jax.jit(step)(variables, batch)

  logits = lambda images: model.apply(variables, jnp.asarray(images, jnp.float32) / 255.0)
  mean = (jax.nn.softmax(logits(batch["images"])) + jax.nn.softmax(logits(batch["images"][:, :, ::-1]))) / 2
  picked = np.asarray(mean)[np.arange(6), batch["labels"]]
  flipped = sums(batch, True)
  np.testing.assert_allclose(float(flipped["loss"]), -np.sum(np.log(picked) * batch["mask"]), rtol=1e-5)
  assert float(flipped["correct"]) == np.sum((np.argmax(mean, -1) == batch["labels"]) * batch["mask"])
  assert float(flipped["loss"]) != pytest.approx(float(sums(batch, False)["loss"]), rel=1e-4)
  # Images that are their own mirror score as without the flip.
  symmetric = {**batch, "images": np.concatenate([batch["images"][:, :, :8], batch["images"][:, :, :8][:, :, ::-1]],
                                                 axis=2)}
  np.testing.assert_allclose(float(sums(symmetric, True)["loss"]), float(sums(symmetric, False)["loss"]), rtol=1e-5)


# --- whole runs ---------------------------------------------------------------------------------------------

def params_of(workdir):
  _, variables, _ = weights.restore(str(workdir))
  return variables


def assert_trees_equal(a, b):
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_run_writes_every_output_and_restores(image_folder, tmp_path):
  workdir = tmp_path / "run"
  results = loop.train_and_evaluate(tiny_config(image_folder), str(workdir))
  for name in ("config.json", "summary.txt", "metrics.jsonl", "loss.png", "accuracy.png", "eval.json",
               "confusion_matrix.png"):
    assert (workdir / name).is_file(), name
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [record["epoch"] for record in history] == [0, 1]
  assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "learning_rate", "seconds"} <= set(history[0])
  evaluation = json.loads((workdir / "eval.json").read_text())
  assert np.asarray(evaluation["confusion_matrix"]).sum() == evaluation["count"] == 12
  assert set(evaluation["per_class"]) == {"blue", "green", "red"}
  assert list((workdir).glob("events.out.tfevents*")), "TensorBoard events"

  model, variables, config = weights.restore(str(workdir))
  assert config.class_names == ["blue", "green", "red"]
  splits = data_lib.load(config.dataset, image_size=16, validation_split=0.25, seed=0)
  images = data_lib.preprocess(jnp.asarray(splits.validation.images, jnp.float32), mode="rescale")
  accuracy = float(jnp.mean(jnp.argmax(model.apply(variables, images), -1) == splits.validation.labels))
  assert accuracy == pytest.approx(results["accuracy"], abs=1e-6)


def test_same_seed_same_numbers_and_resume_after_a_crash(image_folder, tmp_path, monkeypatch):
  config = tiny_config(image_folder, num_epochs=3)
  loop.train_and_evaluate(config, str(tmp_path / "a"))
  loop.train_and_evaluate(config, str(tmp_path / "b"))
  reference = params_of(tmp_path / "a")
  assert_trees_equal(reference, params_of(tmp_path / "b"))
  assert (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1].split('"seconds"')[0] == \
      (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1].split('"seconds"')[0]

  # Crash in the middle of the second epoch, then rerun on the same workdir: the epoch is redone.
  real_batches = data_lib.batches

  def batches_with(fault):
    def faulty_batches(*args, epoch, shuffle, start_batch=0, **kwargs):
      for index, batch in enumerate(real_batches(*args, epoch=epoch, shuffle=shuffle, start_batch=start_batch,
                                                 **kwargs), start=start_batch):
        if shuffle and epoch == 1 and index == 2:
          fault()
        yield batch
    return faulty_batches

  def crash():
    raise KeyboardInterrupt("simulated preemption")
  monkeypatch.setattr(data_lib, "batches", batches_with(crash))
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(config, str(tmp_path / "c"))
  monkeypatch.setattr(data_lib, "batches", real_batches)
  loop.train_and_evaluate(config, str(tmp_path / "c"))
  assert_trees_equal(reference, params_of(tmp_path / "c"))
  lines = (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]

  # SIGTERM mid-epoch: the step finishes, a mid-epoch checkpoint is written, the run stops; the rerun
  # continues from that batch and ends with the same params and the same per-epoch metrics.
  signalled = {"sent": False}

  def terminate():
    if not signalled["sent"]:
      signalled["sent"] = True
      os.kill(os.getpid(), signal.SIGTERM)
  monkeypatch.setattr(data_lib, "batches", batches_with(terminate))
  with pytest.raises(runner.Interrupted, match=r"SIGTERM at step \d+ .* rerun the same command"):
    loop.train_and_evaluate(config, str(tmp_path / "d"))
  monkeypatch.setattr(data_lib, "batches", real_batches)
  loop.train_and_evaluate(config, str(tmp_path / "d"))
  assert_trees_equal(reference, params_of(tmp_path / "d"))
  strip_seconds = lambda path: [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                                for line in path.read_text().splitlines()]
  assert strip_seconds(tmp_path / "d" / "metrics.jsonl") == strip_seconds(tmp_path / "a" / "metrics.jsonl")


def test_a_mid_epoch_checkpoint_from_the_epoch_indexed_loop_resumes_exactly(image_folder, tmp_path, monkeypatch):
  """Before the step-indexed loop (#13) a mid-epoch checkpoint kept the interrupted epoch's running sums in
  record['partial'], with its epoch and batch; such a checkpoint resumes as an uninterrupted run."""
  config = tiny_config(image_folder, num_epochs=3)
  loop.train_and_evaluate(config, str(tmp_path / "reference"))
  real_batches, sent = data_lib.batches, []

  def terminated_batches(*args, epoch, shuffle, start_batch=0, **kwargs):
    for index, batch in enumerate(real_batches(*args, epoch=epoch, shuffle=shuffle, start_batch=start_batch,
                                               **kwargs), start=start_batch):
      if shuffle and epoch == 1 and index == 2 and not sent:
        sent.append(os.kill(os.getpid(), signal.SIGTERM))
      yield batch
  monkeypatch.setattr(data_lib, "batches", terminated_batches)
  with pytest.raises(runner.Interrupted):
    loop.train_and_evaluate(config, str(tmp_path / "old"))
  monkeypatch.setattr(data_lib, "batches", real_batches)

  steps = [path for path in (tmp_path / "old" / "checkpoints" / "latest").iterdir() if path.name.isdigit()]
  latest = max(steps, key=lambda path: int(path.name))
  metadata = latest / "record" / "metadata"
  record = json.loads(metadata.read_text())
  running = record.pop("epoch_metrics")
  steps_per_epoch = record["history"][-1]["step"] // len(record["history"])
  epoch, batch = divmod(int(latest.name), steps_per_epoch)
  assert batch, "the stop request should leave a mid-epoch checkpoint"
  metadata.write_text(json.dumps({**record, "partial": {"epoch": epoch, "batch": batch, **running}}))

  loop.train_and_evaluate(config, str(tmp_path / "old"))
  assert_trees_equal(params_of(tmp_path / "reference"), params_of(tmp_path / "old"))
  strip_seconds = lambda path: [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                                for line in path.read_text().splitlines()]
  assert strip_seconds(tmp_path / "old" / "metrics.jsonl") == strip_seconds(tmp_path / "reference" / "metrics.jsonl")


def test_larger_num_epochs_continues_and_other_changes_are_refused(image_folder, tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(image_folder, num_epochs=1), workdir)
  loop.train_and_evaluate(tiny_config(image_folder, num_epochs=2), workdir)
  assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
  with pytest.raises(ValueError, match=r"changed: learning_rate, model"):
    loop.train_and_evaluate(tiny_config(image_folder, num_epochs=2, learning_rate=0.1, model="simple_cnn_bn"),
                            workdir)
  with pytest.raises(ValueError, match="smaller than"):
    loop.train_and_evaluate(tiny_config(image_folder, num_epochs=1), workdir)


def test_early_stopping_keeps_the_best_epoch(image_folder, tmp_path):
  # A huge learning rate makes validation loss worse after the first epoch, so training stops early.
  config = tiny_config(image_folder, num_epochs=8, optimizer="sgd", learning_rate=0.5, momentum=0.0)
  config.early_stopping.patience = 1
  config.nonfinite = "skip"
  results = loop.train_and_evaluate(config, str(tmp_path / "run"))
  history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  best = min(history, key=lambda record: record["val_loss"])
  assert results["epoch"] == best["epoch"]
  assert results["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
  if len(history) < 8:
    assert history[-1]["epoch"] - best["epoch"] >= 1


def test_restore_best_weights_false_evaluates_and_restores_the_last_epoch(image_folder, tmp_path):
  # The huge learning rate again: the first epoch has the best validation loss, the last does not.
  config = tiny_config(image_folder, num_epochs=3, optimizer="sgd", learning_rate=0.5, momentum=0.0)
  config.early_stopping.restore_best_weights = False
  config.nonfinite = "skip"
  results = loop.train_and_evaluate(config, str(tmp_path / "run"))
  history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert results["epoch"] == history[-1]["epoch"] == 2
  assert results["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-5)
  assert min(history, key=lambda record: record["val_loss"])["epoch"] != 2  # so best and last differ
  last = params_of(tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  saved["early_stopping"]["restore_best_weights"] = True
  (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
  best = params_of(tmp_path / "run")
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(last), jax.tree_util.tree_leaves(best)))


def test_nonfinite_loss_stops_with_the_step(image_folder, tmp_path):
  config = tiny_config(image_folder, optimizer="sgd", learning_rate=1e30, momentum=0.0)
  with pytest.raises(FloatingPointError, match=r"at step \d+"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints" / "best").exists() or \
      not any((tmp_path / "run" / "checkpoints" / "best").iterdir())


def test_mock_tfds_cifar10(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = tiny_config("unused", dataset="cifar10", num_classes=10, image_size=32, num_epochs=1,
                       validation_split=0.5, steps_per_epoch=2)
  with tfds.testing.mock_data(num_examples=32):
    results = loop.train_and_evaluate(config, str(tmp_path / "run"))
  # A stratified half of 32 random-label mock images (rounded per class).
  assert 10 <= results["count"] <= 22
  assert np.asarray(results["confusion_matrix"]).sum() == results["count"]


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 0}, "batch_size must be positive"),
    ({"batch_size": 6}, "not divisible by the 4 devices"),
    ({"learning_rate": -1.0}, "learning_rate must be positive"),
    ({"model": "vgg17"}, "unknown model 'vgg17'"),
    ({"optimizer": "adagrad"}, "unknown optimizer"),
    ({"validation_split": 1.0}, r"validation_split must be in \[0, 1\)"),
    ({"num_epochs": "ten"}, "num_epochs should be a int"),
    ({"mixup_alpha": -0.2}, r"mixup_alpha must be >= 0"),
    ({"test_time_flip": "yes"}, "test_time_flip should be a bool"),
    ({"test_time_flip": True, "bottleneck": {"layer": "x", "hidden": (), "dropout": ()}},
     "test_time_flip mirrors images"),
])
def test_bad_configs_fail_in_one_line_before_compiling(image_folder, tmp_path, overrides, message):
  # Built from a plain dict, as a config file may do, so ConfigDict's own type locking does not apply.
  config = ml_collections.ConfigDict({**tiny_config(image_folder).to_dict(), **overrides})
  with pytest.raises(ValueError, match=message) as error:
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(error.value)


def test_unknown_field_and_wrong_class_count(image_folder, tmp_path):
  config = tiny_config(image_folder)
  config.lerning_rate = 0.1
  with pytest.raises(ValueError, match="unknown config field 'lerning_rate'"):
    loop.train_and_evaluate(config, str(tmp_path / "a"))
  with pytest.raises(ValueError, match="has 3 classes .*num_classes=10"):
    loop.train_and_evaluate(tiny_config(image_folder, num_classes=10), str(tmp_path / "b"))


def test_restore_rejects_a_folder_that_is_not_a_run(tmp_path):
  with pytest.raises(ValueError, match="not a train.py workdir"):
    weights.restore(str(tmp_path))


def test_train_py_cli_trains_and_reports_bad_input_in_one_line(image_folder, tmp_path):
  command = [sys.executable, "train.py", "--config", "configs/simple_cnn.py", "--workdir", str(tmp_path / "run"),
             f"--config.dataset=folder:{image_folder}", "--config.num_classes=3", "--config.image_size=16",
             "--config.batch_size=8", "--config.num_epochs=1"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "epoch 1/1" in done.stdout and (tmp_path / "run" / "eval.json").is_file()

  command[5] = str(tmp_path / "other")
  bad = subprocess.run(command + ["--config.model=alexnet"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0
  last_line = bad.stderr.strip().splitlines()[-1]
  assert last_line.startswith("error:") and "alexnet" in last_line, bad.stderr[-2000:]


def test_a_second_run_on_a_busy_workdir_is_refused(image_folder, tmp_path):
  from cnnjax.train import workdir as workdir_lib
  workdir = str(tmp_path / "run")
  with workdir_lib.exclusive(workdir):
    with pytest.raises(ValueError, match="in use by another train.py run"):
      loop.train_and_evaluate(tiny_config(image_folder), workdir)
  assert not (tmp_path / "run" / "config.json").exists()


def test_model_options_can_be_set_from_the_command_line(monkeypatch):
  """Every model option is a declared config field, so `--config.model_options.X=...` parses (an undeclared
  one would be refused by ml_collections), and None leaves the architecture's default."""
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True)
  argv = ["train.py", f"--config={REPO / 'configs' / 'resnet50_transfer.py'}",
          "--config.model_options.dtype=bfloat16", "--config.model_options.dropout=0.5",
          "--config.model_options.stride_on_3x3=True"]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv
  flag_values(argv)
  config = flag_values.config
  model = experiment.create_model(config)
  assert (model.dtype, model.dropout, model.stride_on_3x3, model.head) == ("bfloat16", 0.5, True, "flatten")
  assert model.activation == "relu"  # model_options.activation is None: the default
  for name, options in ((name, models.options(name)) for name in models.names()):
    assert set(options) - {"axis_name"} <= set(config.model_options), name
