"""Transfer learning: pretrained backbones in zoo models, frozen layers, phased fine-tuning, bottleneck features.

- `config.pretrained`: a weight file (`cnnjax.pretrained.load`), `keras:<arch>` (the official Keras `_notop`
  file, downloaded once into ~/.cache/cnnjax/weights), or a train.py workdir. Every layer of the config's model
  whose variables have the same shapes in the source is copied by (Keras) layer name; the others (the new head)
  keep their fresh initialisation.
- `config.freeze` (regex, `re.fullmatch` on layer names) / `config.freeze_first` (first N layers in forward
  order, as `cnnjax.explain.layer_names` lists them; Keras's `model.layers[:N]` also counts the InputLayer, so
  it is cnnjax's N - 1): frozen parameters get zero updates (`optax.multi_transform` + `set_to_zero`) and
  frozen BatchNorm layers normalise with their fixed moving statistics while training, as Keras (2.1.3 and
  later) runs a non-trainable BatchNormalization (`cnnjax.models.layers.frozen_batch_norm`).
- `config.phases`: runs one after another in `<workdir>/phase1`, `phase2`, ...; each phase is the config updated
  with its overrides, and every phase after the first starts from the weights `restore` gives for the previous.
- `config.bottleneck.layer`: the backbone runs once over the data (`bottleneck_features`, cached as .npy under
  the workdir) and a dense head (Dense-Dropout per hidden layer, then Dense) trains on the features.
"""
import functools
import json
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from cnnjax import data as data_lib
from cnnjax import pretrained as pretrained_lib
from cnnjax.pretrained import keras_h5, registry
from cnnjax.models import layers
from cnnjax.train import optim
from cnnjax.train import workdir as workdir_lib

KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
KERAS_ARCHS = ("mobilenet", "vgg16", "resnet50")
# Fields of two zoo models that may differ while the weights still mean the same thing.
_HEAD_FIELDS = ("num_classes", "head", "dropout", "activation", "dtype", "axis_name", "parent", "name")


def cache_dir() -> Path:
  return Path(os.environ.get("CNNJAX_CACHE") or Path.home() / ".cache" / "cnnjax") / "weights"


def keras_file(arch: str, config: ml_collections.ConfigDict) -> Tuple[str, str]:
  """(file name, URL) of the official Keras `_notop` ImageNet weights for `keras:<arch>`."""
  if arch == "vgg16":
    name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return name, f"{KERAS_URL}vgg16/{name}"
  if arch == "resnet50":
    name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return name, f"{KERAS_URL}resnet/{name}"
  if arch == "mobilenet":
    alpha = config.model_options.get("alpha") or 1.0
    alphas = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}
    if alpha not in alphas:
      raise ValueError(f"Keras publishes MobileNet weights for alpha {sorted(alphas)}, not {alpha}; set "
                       f"config.model_options.alpha")
    size = config.image_size if config.image_size in (128, 160, 192, 224) else 224
    name = f"mobilenet_{alphas[alpha]}_{size}_tf_no_top.h5"
    return name, f"{KERAS_URL}mobilenet/{name}"
  raise ValueError(f"unknown Keras weights 'keras:{arch}'; choose one of "
                   f"{', '.join('keras:' + name for name in KERAS_ARCHS)}, or give a weight file")


def _fetch(name: str, url: str) -> str:
  path = cache_dir() / name
  if path.is_file():
    return str(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f"{name}.tmp-{os.getpid()}")
  try:
    urllib.request.urlretrieve(url, temporary)
  except OSError:
    temporary.unlink(missing_ok=True)
    raise ValueError(f"cannot download {name} (offline?): fetch {url} and put it at {path}") from None
  os.replace(temporary, path)
  return str(path)


def _repo_relative(path: str) -> str:
  """Relative paths are tried from the working directory, then from the checkout (as configs write them)."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  beside_repo = Path(__file__).resolve().parents[2] / path
  return str(beside_repo) if beside_repo.exists() else path


def resolve_source(config: ml_collections.ConfigDict) -> str:
  """The local file or workdir `config.pretrained` names (downloading `keras:<arch>` once)."""
  source = config.pretrained
  if source.startswith("keras:"):
    return _fetch(*keras_file(source[len("keras:"):], config))
  path = _repo_relative(source)
  if not os.path.exists(path):
    raise ValueError(f"config.pretrained={source!r}: no such weight file or workdir")
  return path


def _is_workdir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def preprocess_mode(config: ml_collections.ConfigDict) -> str:
  """config.preprocess, where 'auto' means the pretrained source's convention ('rescale' without one)."""
  if config.preprocess != "auto":
    return config.preprocess
  if not config.get("pretrained"):
    return "rescale"
  if config.pretrained.startswith("keras:"):
    return pretrained_lib.preprocessing_for(config.pretrained)
  path = resolve_source(config)
  if _is_workdir(path):
    with open(os.path.join(path, "config.json")) as f:
      return preprocess_mode(ml_collections.ConfigDict(json.load(f)))
  return pretrained_lib.preprocessing_for(path)


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy with preprocess='auto' made concrete, so config.json says what the run did."""
  config = config.copy_and_resolve_references()
  if "preprocess" in config and config.preprocess == "auto":
    config.preprocess = preprocess_mode(config)
  return config


# ---------------------------------------------------------------------------------------------------------------
# Pretrained weights into a model built for the config.

def _load_source(path: str, num_classes: int):
  """(model, variables, layers the source really holds) of a weight file or a train.py workdir."""
  if _is_workdir(path):
    from cnnjax.train import loop  # loop imports this module
    model, variables, _ = loop.restore(path)
    return model, variables, None
  if registry.file_format(path) == "keras_weights":
    with keras_h5.open_file(path) as file:
      names = keras_h5.layer_names(file)
      if not keras_h5.has_top(names, keras_h5.application_arch(names, path)):
        # A _notop file: load() adds a fresh head, which must not count as pretrained.
        model, variables = pretrained_lib.load(path, num_classes=num_classes)
        return model, variables, set(names)
  model, variables = pretrained_lib.load(path)
  return model, variables, None


def _check_same_architecture(source_model, model, source: str) -> None:
  if type(source_model) is not type(model):
    raise ValueError(f"{source} holds a {type(source_model).__name__} but config.model builds a "
                     f"{type(model).__name__}; choose the matching config.model")
  for field in source_model.__dataclass_fields__:
    if field in _HEAD_FIELDS:
      continue
    ours, theirs = getattr(model, field, None), getattr(source_model, field, None)
    if ours != theirs:
      raise ValueError(f"{source} was trained with {field}={theirs!r} but the config's model has {ours!r}; "
                       f"set config.model_options.{field} (or choose the matching config.model)")


def merge_layers(variables: Dict, source: Dict, allowed: Optional[set] = None) -> Tuple[Dict, list, list]:
  """`variables` with every layer whose tensors all have the same shapes in `source` replaced by the source's.

  Returns (merged variables, loaded layer names, new layer names); a layer is all-or-nothing.
  """
  loaded, new = [], []
  merged = {collection: dict(layer_vars) for collection, layer_vars in variables.items()}
  layer_names = list(dict.fromkeys(name for layer_vars in variables.values() for name in layer_vars))
  for layer in layer_names:
    ours = {collection: variables[collection][layer] for collection in variables if layer in variables[collection]}
    theirs = {collection: source.get(collection, {}).get(layer) for collection in ours}
    fits = (allowed is None or layer in allowed) and all(
        theirs[c] is not None and jax.tree_util.tree_structure(theirs[c]) == jax.tree_util.tree_structure(ours[c])
        and all(a.shape == b.shape for a, b in zip(jax.tree.leaves(theirs[c]), jax.tree.leaves(ours[c])))
        for c in ours)
    if not fits:
      new.append(layer)
      continue
    loaded.append(layer)
    for collection in ours:
      merged[collection][layer] = jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype), theirs[collection],
                                               ours[collection])
  return merged, loaded, new


def load_pretrained(model: nn.Module, variables: Dict, config: ml_collections.ConfigDict) -> Dict:
  """`variables` (the model's fresh init) with the layers of `config.pretrained` copied in; prints one line."""
  path = resolve_source(config)
  source_model, source_variables, allowed = _load_source(path, config.num_classes)
  _check_same_architecture(source_model, model, config.pretrained)
  merged, loaded, new = merge_layers(variables, source_variables, allowed)
  rank = {name: index for index, name in enumerate(_layer_order(model, config))}
  loaded, new = (sorted(names, key=lambda name: rank.get(name, len(rank))) for names in (loaded, new))
  if not loaded:
    raise ValueError(f"config.pretrained={config.pretrained!r}: no layer of {config.model} fits the file's "
                     f"weights; check config.model and config.model_options")
  print(f"pretrained {config.pretrained}: loaded {len(loaded)} layers ({loaded[0]} .. {loaded[-1]}); "
        f"new: {', '.join(new) or 'none'}")
  return merged


def initial_variables(model: nn.Module, config: ml_collections.ConfigDict) -> Dict:
  """The model's variables initialised from config.seed, with config.pretrained's layers copied in."""
  image = jnp.zeros((1, config.image_size, config.image_size, config.channels), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(config.seed), image)
  variables = {collection: dict(layer_vars) for collection, layer_vars in variables.items()}
  return load_pretrained(model, variables, config) if config.pretrained else variables


# ---------------------------------------------------------------------------------------------------------------
# Freezing.

def _layer_order(model: nn.Module, config: ml_collections.ConfigDict) -> list:
  from cnnjax import explain  # the layer tracer lives with the explainers
  return explain.layer_names(model, (config.image_size, config.image_size, config.channels))


def frozen_layers(model: nn.Module, config: ml_collections.ConfigDict) -> Tuple[str, ...]:
  """Names of the layers `config.freeze` / `config.freeze_first` select, in forward order."""
  if not config.get("freeze") and not config.get("freeze_first"):  # also configs saved before these fields
    return ()
  names = _layer_order(model, config)
  if config.freeze_first > len(names):
    raise ValueError(f"config.freeze_first={config.freeze_first} but {config.model} has {len(names)} layers")
  frozen = set(names[:config.freeze_first])
  if config.freeze:
    matched = [name for name in names if re.fullmatch(config.freeze, name)]
    if not matched:
      raise ValueError(f"config.freeze={config.freeze!r} matches none of {config.model}'s layers "
                       f"({', '.join(names[:4])}, ...); it must match whole layer names (re.fullmatch)")
    frozen.update(matched)
  return tuple(name for name in names if name in frozen)


def freeze(tx: optax.GradientTransformation, frozen: Sequence[str]) -> optax.GradientTransformation:
  """`tx` for the parameters of layers not in `frozen`; zero updates (and no optimizer state) for the others."""
  if not frozen:
    return tx
  frozen = frozenset(frozen)

  def labels(params):
    return {layer: jax.tree.map(lambda _, f=layer in frozen: "frozen" if f else "trained", layer_params)
            for layer, layer_params in params.items()}
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


# ---------------------------------------------------------------------------------------------------------------
# Phases.

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


def train_phases(config: ml_collections.ConfigDict, workdir: str, train_fn: Callable) -> Dict:
  """Runs each phase with `train_fn(config, workdir)` (resuming finished or partial phases); the last's eval."""
  from cnnjax.train import config as config_lib
  runs = phase_configs(config, workdir)
  for _, phase in runs:
    config_lib.validate(phase)
  workdir_lib.prepare(workdir, config)
  if jax.process_index() == 0:
    workdir_lib.write_text(workdir, "config.json", config_lib.to_json(config))
  results = None
  for index, (phase_dir, phase) in enumerate(runs, start=1):
    print(f"phase {index}/{len(runs)} in {phase_dir}")
    results = train_fn(phase, phase_dir)
  if jax.process_index() == 0:
    workdir_lib.write_text(workdir, "eval.json", json.dumps(results, indent=2))
  return results


# ---------------------------------------------------------------------------------------------------------------
# Bottleneck features.

def _npy_save(path: str, array: np.ndarray) -> None:
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "wb") as f:
    np.save(f, array)
  os.replace(temporary, path)


def bottleneck_features(model: nn.Module, variables: Dict, images: np.ndarray, layer: str, batch_size: int, *,
                        preprocess: Optional[Dict] = None, cache_path: Optional[str] = None) -> np.ndarray:
  """The output of `layer` for every image (uint8 or [0, 255] floats, NHWC), in inference mode.

  One jitted program over padded batches of `batch_size`; with `cache_path`, a saved .npy of the same
  length is returned without running the model, and new features are written atomically.
  """
  if cache_path and os.path.exists(cache_path):
    cached = np.load(cache_path)
    if len(cached) == len(images):
      return cached
  preprocess = preprocess or {"mode": "rescale"}

  @jax.jit
  def extract(images):
    inputs = data_lib.preprocess(images.astype(jnp.float32), **preprocess)
    _, state = model.apply(variables, inputs, train=False, mutable=["intermediates"],
                           capture_intermediates=lambda module, method: module.name == layer and method == "__call__")
    captured = state.get("intermediates", {}).get(layer)
    if captured is None:
      raise ValueError(f"bottleneck layer {layer!r} is not a layer of the model; see cnnjax.explain.layer_names")
    return captured["__call__"][0]

  outputs = []
  for start in range(0, len(images), batch_size):
    batch = np.asarray(images[start:start + batch_size])
    padding = batch_size - len(batch)
    if padding:  # one shape, one compilation
      batch = np.concatenate([batch, np.zeros((padding, *batch.shape[1:]), batch.dtype)])
    outputs.append(np.asarray(extract(batch))[:batch_size - padding])
  features = np.concatenate(outputs).astype(np.float32)
  if cache_path:
    os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
    _npy_save(cache_path, features)
  return features


class DenseHead(nn.Module):
  """Flatten - (Dense relu - Dropout) per hidden layer - Dense `predictions` (logits), Keras names."""
  num_classes: int
  hidden: Tuple[int, ...] = (512, 256)
  dropout: Tuple[float, ...] = (0.5, 0.2)

  @nn.compact
  def __call__(self, features, train: bool = False):
    x = layers.Flatten(name="flatten")(features)
    for index, (units, rate) in enumerate(zip(self.hidden, self.dropout)):
      suffix = f"_{index}" if index else ""
      x = layers.Dense(units, activation="relu", name=f"dense{suffix}")(x)
      x = layers.dropout(rate, train, name=f"dropout{suffix}")(x)
    return layers.Dense(self.num_classes, name="predictions")(x).astype(jnp.float32)


def _head_step(state, features, labels, key, *, head, tx, num_classes):
  params, opt_state = state

  def loss_fn(params):
    logits = head.apply({"params": params}, features, train=True, rngs={"dropout": key})
    loss = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, num_classes)).mean()
    return loss, logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return (optax.apply_updates(params, updates), opt_state), {"loss": loss, "accuracy": accuracy}


def _head_eval(params, features, labels, *, head, num_classes, batch_size):
  loss, correct = 0.0, 0.0
  apply = jax.jit(lambda p, x: head.apply({"params": p}, x))
  for start in range(0, len(features), batch_size):
    logits = apply(params, features[start:start + batch_size])
    target = labels[start:start + batch_size]
    loss += float(optax.softmax_cross_entropy(logits, jax.nn.one_hot(target, num_classes)).sum())
    correct += float(jnp.sum(jnp.argmax(logits, -1) == target))
  return {"loss": loss / len(features), "accuracy": correct / len(features)}


def train_on_bottleneck(config: ml_collections.ConfigDict, workdir: str, model: nn.Module, variables: Dict,
                        splits: data_lib.Splits, preprocess: Dict) -> Dict:
  """Features of `config.bottleneck.layer` (cached under `<workdir>/bottleneck/`), then a `DenseHead` trained
  on them for config.num_epochs with config's optimizer; writes metrics.jsonl, eval.json and head.npz."""
  settings = config.bottleneck
  cache = os.path.join(workdir, "bottleneck")
  started = time.time()
  extract = functools.partial(bottleneck_features, model, variables, layer=settings.layer,
                              batch_size=config.eval_batch_size, preprocess=preprocess)
  train = extract(splits.train.images, cache_path=os.path.join(cache, f"train_{settings.layer}.npy"))
  validation = splits.validation if splits.validation is not None and len(splits.validation) else None
  val = (extract(validation.images, cache_path=os.path.join(cache, f"validation_{settings.layer}.npy"))
         if validation is not None else None)
  print(f"bottleneck features {settings.layer} {train.shape[1:]}: {len(train)} train"
        f"{f', {len(val)} validation' if val is not None else ''} images in {time.time() - started:.1f}s")

  head = DenseHead(config.num_classes, tuple(settings.hidden), tuple(settings.dropout))
  steps_per_epoch = max(1, len(train) // config.batch_size)
  if config.steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
  schedule = optim.create_schedule(config, steps_per_epoch)
  tx = optim.create_optimizer(config, schedule)
  init_key, rng = jax.random.split(jax.random.PRNGKey(config.seed))
  params = head.init(init_key, jnp.zeros((1, *train.shape[1:])))["params"]
  state = (params, tx.init(params))
  step = jax.jit(functools.partial(_head_step, head=head, tx=tx, num_classes=config.num_classes))
  evaluate = functools.partial(_head_eval, head=head, num_classes=config.num_classes,
                               batch_size=config.eval_batch_size)
  history, best = [], None
  for epoch in range(config.num_epochs):
    epoch_started = time.time()
    order = data_lib.pipeline.epoch_permutation(len(train), config.seed, epoch)
    sums = {"loss": 0.0, "accuracy": 0.0}
    for index in range(steps_per_epoch):
      batch = order[index * config.batch_size:(index + 1) * config.batch_size]
      state, metrics = step(state, train[batch], splits.train.labels[batch],
                            jax.random.fold_in(rng, epoch * steps_per_epoch + index))
      sums = {key: sums[key] + float(metrics[key]) for key in sums}
    record = {"epoch": epoch, "step": (epoch + 1) * steps_per_epoch,
              "learning_rate": float(schedule((epoch + 1) * steps_per_epoch - 1)),
              "train_loss": sums["loss"] / steps_per_epoch, "train_accuracy": sums["accuracy"] / steps_per_epoch}
    if val is not None:
      scores = evaluate(state[0], val, validation.labels)
      record.update(val_loss=scores["loss"], val_accuracy=scores["accuracy"])
      if best is None or scores["loss"] < best[0]:
        best = (scores["loss"], epoch, state[0])
    record["seconds"] = time.time() - epoch_started
    history.append(record)
    print(" - ".join([f"epoch {epoch + 1}/{config.num_epochs}"] + [
        f"{key} {record[key]:.4f}" for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
        if key in record] + [f"{record['seconds']:.1f}s"]))
  final_params, final_epoch = (best[2], best[1]) if best else (state[0], config.num_epochs - 1)
  scored = (val, validation.labels) if val is not None else (train, splits.train.labels)
  results = dict(evaluate(final_params, *scored), epoch=final_epoch,
                 split="validation" if val is not None else "train (no validation split)")
  if jax.process_index() == 0:
    workdir_lib.write_history(workdir, history)
    workdir_lib.write_text(workdir, "eval.json", json.dumps(results, indent=2))
    flat = traverse_util.flatten_dict(jax.device_get(final_params), sep="/")
    temporary = os.path.join(workdir, f"head.npz.tmp-{os.getpid()}")
    with open(temporary, "wb") as f:
      np.savez(f, **flat)
    os.replace(temporary, os.path.join(workdir, "head.npz"))
  print(f"eval ({results['split']}, head of epoch {final_epoch}): loss {results['loss']:.4f}, "
        f"accuracy {results['accuracy']:.4f}; outputs in {workdir}")
  return results

