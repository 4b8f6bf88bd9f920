"""Transfer learning: pretrained layers copied by name, freezing, phases, bottleneck features, keras: sources."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import data as data_lib
from cnnjax import models, pretrained
from cnnjax.train import config as config_lib
from cnnjax.models import introspect
from cnnjax.pretrained import merge
from cnnjax.train import bottleneck, experiment, loop, optim, step as step_lib, weights

SIZE = 12


def tiny_config(image_folder, **overrides):
  config = config_lib.default_config()
  config.model = "simple_cnn_bn"
  config.dataset = f"folder:{image_folder}"
  config.num_classes = 3
  config.image_size = SIZE
  config.batch_size = 4
  config.eval_batch_size = 8
  config.num_epochs = 1
  config.steps_per_epoch = 3
  config.validation_split = 0.25
  config.augment.update(horizontal_flip=False, width_shift=0.0, height_shift=0.0)
  config.update(overrides)
  return config


def init_variables(model, seed):
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
  return {collection: dict(layer_vars) for collection, layer_vars in variables.items()}


@pytest.fixture(scope="module")
def pretrained_run(image_folder, tmp_path_factory):
  """A trained 3-class run: its workdir is a `config.pretrained` source for a new 2-class model."""
  workdir = str(tmp_path_factory.mktemp("source"))
  loop.train_and_evaluate(tiny_config(image_folder), workdir)
  return workdir


def layers_with_params(variables):
  return list(variables["params"])


def test_pretrained_layers_loaded_and_head_new(pretrained_run, image_folder, capsys):
  _, source, _ = weights.restore(pretrained_run)
  config = tiny_config(image_folder, num_classes=2, pretrained=pretrained_run)
  model = experiment.create_model(config)
  fresh = init_variables(model, config.seed)
  variables = weights.initial_variables(model, config)
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert "new: predictions" in line and "loaded" in line
  for layer in layers_with_params(variables):
    for collection in variables:
      if layer not in variables[collection]:
        continue
      expected = fresh if layer == "predictions" else source
      for got, want in zip(jax.tree.leaves(variables[collection][layer]),
                           jax.tree.leaves(expected[collection][layer])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert variables["params"]["predictions"]["kernel"].shape[-1] == 2


def test_merge_layers_copies_only_equal_shapes():
  ours = {"params": {"a": {"kernel": jnp.zeros((2, 3))}, "b": {"kernel": jnp.zeros((3, 4))}}}
  theirs = {"params": {"a": {"kernel": jnp.ones((2, 3))}, "b": {"kernel": jnp.ones((3, 5))}}}
  merged, loaded, new = merge.merge_layers(ours, theirs)
  assert loaded == ["a"] and new == ["b"]
  assert float(merged["params"]["a"]["kernel"].sum()) == 6 and float(merged["params"]["b"]["kernel"].sum()) == 0


def test_architecture_mismatch_is_one_line(pretrained_run, image_folder):
  config = tiny_config(image_folder, model="simple_cnn", pretrained=pretrained_run)
  with pytest.raises(ValueError, match="config.model"):
    weights.initial_variables(experiment.create_model(config), config)


def run_steps(config, steps=3):
  """`steps` train steps from one state; returns (before, after) states."""
  model = experiment.create_model(config)
  tx = experiment.create_optimizer(config, model, optim.create_schedule(config, 10))
  state = step_lib.create_train_state(model, tx, (SIZE, SIZE, 3), config.seed)
  before = jax.device_get(state)
  step = jax.jit(lambda s, b: step_lib.train_step(
      s, b, model=model, num_classes=3, preprocess={"mode": "rescale"},
      frozen=optim.frozen_layers(model, experiment.image_shape(config), config)))
  rng = np.random.default_rng(0)
  for _ in range(steps):
    batch = {"images": rng.integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8),
             "labels": rng.integers(0, 3, (4,)).astype(np.int32)}
    state, _ = step(state, batch)
  return model, before, jax.device_get(state)


def changed(before, after, layer):
  tree = lambda state: {"p": state.params.get(layer, {}), "s": state.batch_stats.get(layer, {})}
  return any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tree(before)), jax.tree.leaves(tree(after))))


@pytest.mark.parametrize("freeze", [dict(freeze="conv2d.*|batch_normalization"), dict(freeze_first=3)])
def test_frozen_params_and_bn_stats_stay_bit_identical(image_folder, freeze):
  config = tiny_config(image_folder, optimizer="sgd", learning_rate=0.1, **freeze)
  model, before, after = run_steps(config)
  frozen = optim.frozen_layers(model, experiment.image_shape(config), config)
  names = introspect.layer_names(model, experiment.image_shape(config))
  if "freeze_first" in freeze:
    assert frozen == tuple(names[:3])
  else:
    assert "conv2d" in frozen and "batch_normalization" in frozen and "conv2d_1" in frozen
  assert "batch_normalization" in before.batch_stats and "batch_normalization" in frozen
  for layer in set(before.params) | set(before.batch_stats):
    assert changed(before, after, layer) == (layer not in frozen), layer


def test_frozen_batch_norm_normalises_with_moving_statistics_while_training():
  """Keras semantics for a non-trainable BatchNormalization: train=True, yet the output is the inference one."""
  model = models.create("simple_cnn_bn", num_classes=3)
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, SIZE, SIZE, 3))
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  # Moving statistics far from the batch's, so batch and moving normalisation differ visibly.
  variables = {"params": variables["params"],
               "batch_stats": jax.tree.map(lambda s: s + 3.0, variables["batch_stats"])}
  bn_layers = list(variables["batch_stats"])

  def features(frozen):
    with introspect.frozen_batch_norm(frozen):
      return model.apply(variables, images, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.PRNGKey(2)},
                         capture_intermediates=lambda module, _: module.name == "batch_normalization")
  (_, trained), (_, frozen) = features(()), features(bn_layers)
  inference = model.apply(variables, images, train=False,
                          capture_intermediates=lambda module, _: module.name == "batch_normalization")[1]
  output = lambda state: state["intermediates"]["batch_normalization"]["__call__"][0]
  np.testing.assert_allclose(output(frozen), output(inference), rtol=1e-6)
  assert np.max(np.abs(output(trained) - output(inference))) > 0.1
  assert jax.tree.all(jax.tree.map(np.array_equal, frozen["batch_stats"], variables["batch_stats"]))

  # Freezing intercepts flax's BatchNorm itself: a plain Linen model's layers freeze too, whether train mode is
  # a field of the layer or an argument of its call.
  import flax.linen as nn

  class PlainBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.BatchNorm(use_running_average=not train, name="field")(x)
      return nn.BatchNorm(name="argument")(x, use_running_average=not train)

  plain = PlainBN()
  plain_variables = plain.init(jax.random.PRNGKey(0), images, train=False)
  plain_variables = {"params": plain_variables["params"],
                     "batch_stats": jax.tree.map(lambda s: s + 3.0, plain_variables["batch_stats"])}
  with introspect.frozen_batch_norm(["field", "argument"]):
    frozen_outputs, updates = plain.apply(plain_variables, images, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(frozen_outputs, plain.apply(plain_variables, images, train=False), rtol=1e-6)
  assert jax.tree.all(jax.tree.map(np.array_equal, updates["batch_stats"], plain_variables["batch_stats"]))


def test_freeze_regex_that_matches_nothing_says_so(image_folder):
  config = tiny_config(image_folder, freeze="block.*")
  with pytest.raises(ValueError, match="matches none"):
    optim.frozen_layers(experiment.create_model(config), experiment.image_shape(config), config)
  with pytest.raises(ValueError, match="regular expression"):
    config_lib.validate(tiny_config(image_folder, freeze="("))


def test_bottleneck_features_cached_and_reused(tmp_path):
  model = models.create("simple_cnn_bn", num_classes=3)
  variables = init_variables(model, 0)
  images = np.random.default_rng(0).integers(0, 255, (5, SIZE, SIZE, 3), dtype=np.uint8)
  cache = str(tmp_path / "features.npy")
  features = bottleneck.bottleneck_features(model, variables, images, "flatten", 2, cache_path=cache)
  expected = model.apply(variables, data_lib.preprocess(jnp.asarray(images, jnp.float32), "rescale"),
                         train=False, capture_intermediates=True)[1]["intermediates"]["flatten"]["__call__"][0]
  np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
  stamp = os.stat(cache).st_mtime_ns
  other = init_variables(model, 1)  # different weights: only a cache hit gives the same features back
  again = bottleneck.bottleneck_features(model, other, images, "flatten", 2, cache_path=cache)
  np.testing.assert_array_equal(again, features)
  assert os.stat(cache).st_mtime_ns == stamp
  with pytest.raises(ValueError, match="not a layer"):
    bottleneck.bottleneck_features(model, variables, images, "nope", 2)


def test_bottleneck_head_trains(image_folder, pretrained_run, tmp_path):
  config = tiny_config(image_folder, pretrained=pretrained_run, num_epochs=15, steps_per_epoch=None,
                       optimizer="adam", learning_rate=3e-3)
  config.bottleneck.update(layer="flatten", hidden=(16,), dropout=(0.1,))
  results = loop.train_and_evaluate(config, str(tmp_path))
  history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert sorted(os.listdir(tmp_path / "bottleneck")) == ["train_flatten.npy", "validation_flatten.npy"]
  assert results["accuracy"] > 0.5 and (tmp_path / "head.npz").is_file()


def test_bottleneck_head_resumes_exactly_after_a_crash(image_folder, pretrained_run, tmp_path, monkeypatch):
  """The head trains on the same loop as any model: checkpointed every step, a crash mid-epoch and a rerun end
  with the head and the per-epoch metrics of an uninterrupted run."""
  config = tiny_config(image_folder, pretrained=pretrained_run, num_epochs=3, checkpoint_every_steps=1)
  config.bottleneck.update(layer="flatten", hidden=(16,), dropout=(0.5,))
  loop.train_and_evaluate(config, str(tmp_path / "reference"))
  real_batches = data_lib.batches

  def crashing_batches(*args, epoch, shuffle, start_batch=0, **kwargs):
    for index, batch in enumerate(real_batches(*args, epoch=epoch, shuffle=shuffle, start_batch=start_batch,
                                               **kwargs), start=start_batch):
      if shuffle and epoch == 1 and index == 1:
        raise KeyboardInterrupt("simulated preemption")
      yield batch
  monkeypatch.setattr(data_lib, "batches", crashing_batches)
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(config, str(tmp_path / "crashed"))
  monkeypatch.setattr(data_lib, "batches", real_batches)
  loop.train_and_evaluate(config, str(tmp_path / "crashed"))
  heads = [dict(np.load(tmp_path / run / "head.npz")) for run in ("reference", "crashed")]
  assert heads[0].keys() == heads[1].keys()
  for key in heads[0]:
    np.testing.assert_array_equal(heads[0][key], heads[1][key])
  metrics = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
              for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("reference", "crashed")]
  assert metrics[0] == metrics[1] and len(metrics[0]) == 3


def test_two_phases_second_starts_from_first(image_folder, pretrained_run, tmp_path):
  config = tiny_config(image_folder, pretrained=pretrained_run, num_classes=2)
  config.phases = (dict(freeze="(?!predictions).*", optimizer="rmsprop"),
                   dict(freeze_first=3, optimizer="sgd", learning_rate=1e-3, momentum=0.9))
  with pytest.raises(ValueError, match="classes"):  # the folder has 3 classes
    loop.train_and_evaluate(config, str(tmp_path / "bad"))
  config.num_classes = 3
  loop.train_and_evaluate(config, str(tmp_path))
  _, phase1, _ = weights.restore(str(tmp_path / "phase1"))
  phase2_config = json.loads((tmp_path / "phase2" / "config.json").read_text())
  assert phase2_config["pretrained"] == str(tmp_path / "phase1") and phase2_config["optimizer"] == "sgd"
  # Phase 2 froze its first 3 layers: their weights are phase 1's exactly.
  model = experiment.create_model(config)
  _, final, _ = weights.restore(str(tmp_path))
  for layer in introspect.layer_names(model, experiment.image_shape(config))[:3]:
    for got, want in zip(jax.tree.leaves(final["params"].get(layer, {})),
                         jax.tree.leaves(phase1["params"].get(layer, {}))):
      np.testing.assert_array_equal(got, want)
  # Phase 1 froze everything but the head: its backbone is still the pretrained run's.
  _, source, _ = weights.restore(pretrained_run)
  np.testing.assert_array_equal(phase1["params"]["conv2d"]["kernel"], source["params"]["conv2d"]["kernel"])
  assert not np.array_equal(phase1["params"]["predictions"]["kernel"], source["params"]["predictions"]["kernel"])
  assert (tmp_path / "eval.json").is_file()
  loop.train_and_evaluate(config, str(tmp_path))  # a rerun resumes both finished phases


def test_offline_keras_weights_name_the_file(image_folder, tmp_path, monkeypatch):
  monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path))
  monkeypatch.setattr(merge.urllib.request, "urlretrieve",
                      lambda *args: (_ for _ in ()).throw(OSError("no network")))
  config = tiny_config(image_folder, model="resnet50", pretrained="keras:resnet50")
  with pytest.raises(ValueError) as error:
    experiment.resolve_source(config)
  message = str(error.value)
  assert "\n" not in message and "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
  assert str(tmp_path / "weights") in message
  assert experiment.preprocess_mode(config) == "caffe"


def test_keras_weights_download_once_into_the_cache(shared_dir, tmp_path, monkeypatch):
  """`keras:mobilenet` against a local HTTP server standing in for Keras's bucket: one download, then the cache;
  a transfer cut short leaves nothing behind."""
  import functools
  import http.server
  import shutil
  import threading
  served = tmp_path / "bucket"
  (served / "mobilenet").mkdir(parents=True)
  name = "mobilenet_2_5_224_tf_no_top.h5"
  shutil.copy(shared_dir / "weights/mobilenet/mobilenet_2_5_224_tf.h5", served / "mobilenet" / name)
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # pylint: disable=invalid-name
      requests.append(self.path)
      if os.environ.get("CUT_SHORT"):  # promise a megabyte, send a kilobyte
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        self.wfile.write(b"\0" * 1000)
        return
      super().do_GET()

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    monkeypatch.setattr(merge, "KERAS_URL", f"http://127.0.0.1:{server.server_port}/")
    config = config_lib.default_config()
    config.update(model="mobilenet", image_size=224, pretrained="keras:mobilenet")
    config.model_options.alpha = 0.25

    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path / "cut"))
    monkeypatch.setenv("CUT_SHORT", "1")
    with pytest.raises(ValueError, match=name):
      experiment.resolve_source(config)
    assert not any((tmp_path / "cut").rglob("*.h5*")), "a partial download was left in the cache"

    monkeypatch.delenv("CUT_SHORT")
    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path / "cache"))
    requests.clear()
    first, second = experiment.resolve_source(config), experiment.resolve_source(config)
    assert first == second == str(tmp_path / "cache" / "weights" / name) and len(requests) == 1
    model, variables = pretrained.load(first)
    assert "conv_pw_13" in variables["params"]
  finally:
    server.shutdown()
