"""Config checks that run before anything is compiled, and the rule for what may change on resume."""
import importlib
import json
import math
import re
from typing import Any, Dict, List

import jax
import ml_collections
from ml_collections import config_dict

from cnnjax import models
from cnnjax.train import optim

EARLY_STOPPING_MONITORS = ("val_loss", "val_accuracy")
AUGMENT_FIELDS = ("horizontal_flip", "rotation", "width_shift", "height_shift", "shear", "zoom")
# Fields a rerun may change on an existing workdir: a larger num_epochs continues a finished run
# (Keras's initial_epoch); the others change no numbers.
RESUMABLE_CHANGES = ("num_epochs", "eval_batch_size", "data_dir", "keep_checkpoints", "checkpoint_every_steps",
                     "tensorboard_explain_images",
                     # The LR finder is not a training run: its settings never change what training computes.
                     "lr_find", "lr_find_steps", "lr_find_min", "lr_find_max")
# Added by the training loop to the saved config; not user settings.
DERIVED_FIELDS = ("class_names",)


def default_config() -> ml_collections.ConfigDict:
  """Every config field with its default; configs/*.py start from this and override a few."""
  config = ml_collections.ConfigDict()
  for add_fields in (_model_and_data_fields, _optimisation_fields, _run_fields):
    add_fields(config)
  return config


def _model_and_data_fields(config: ml_collections.ConfigDict) -> None:
  # Model: a name from cnnjax.models.names(); options are passed to cnnjax.models.create (models.options(name)
  # lists those an architecture takes; None = its default). Declared with their types so that
  # `--config.model_options.dtype=bfloat16` works on the command line.
  config.model = "simple_cnn"
  config.model_options = ml_collections.ConfigDict({
      **{name: config_dict.placeholder(str) for name in ("activation", "pooling", "head", "dtype")},
      **{name: config_dict.placeholder(float) for name in ("dropout", "conv_dropout", "alpha")},
      **{name: config_dict.placeholder(bool) for name in ("batch_norm", "stride_on_3x3")},
  })
  config.num_classes = 10
  config.image_size = 32
  config.channels = 3

  # Data: 'cifar10', 'cats_vs_dogs' (tfds), 'imagenet2012' (tfds, from the tars in DATA_DIR/downloads/manual,
  # with its own validation split), 'celeb_a:ATTRIBUTE' (tfds celeb_a faces labelled by one binary attribute, e.g.
  # 'celeb_a:Smiling', with its own validation and test splits) or 'folder:PATH' (a directory or .zip, one
  # subfolder per class).
  config.dataset = "cifar10"
  config.data_dir = config_dict.placeholder(str)  # tfds data_dir; None = tfds default
  config.limit_per_class = config_dict.placeholder(int)  # use only the first N images of each class
  config.validation_split = 0.1  # a fixed, stratified share of the training split (not used by celeb_a, imagenet2012)
  # Datasets whose decoded uint8 images (all splits) would exceed this many GB (10^9 bytes) are streamed: read and
  # decoded on threads while training (cnnjax.data.streaming, grain) instead of held in memory; 0 = always stream.
  config.in_memory_limit_gb = 2.0
  # rescale | mean_std | caffe | tf | torch (cnnjax.data.preprocess); auto: the pretrained source's
  # convention (cnnjax.pretrained.preprocessing_for), else rescale. Saved runs record the concrete mode.
  config.preprocess = "auto"
  config.mean = config_dict.placeholder(tuple)  # per channel, for preprocess='mean_std'
  config.std = config_dict.placeholder(tuple)
  # Keras ImageDataGenerator settings, applied on device per image; all zero/False = no augmentation.
  config.augment = ml_collections.ConfigDict(dict(
      horizontal_flip=True, rotation=0.0, width_shift=0.1, height_shift=0.1, shear=0.0, zoom=0.0))


def _optimisation_fields(config: ml_collections.ConfigDict) -> None:
  config.batch_size = 32  # global, split over devices and hosts
  config.eval_batch_size = 256
  config.num_epochs = 10
  config.steps_per_epoch = config_dict.placeholder(int)  # cap per epoch, as Keras fit(steps_per_epoch=)
  config.optimizer = "adam"  # adam | adamw | sgd | rmsprop
  config.learning_rate = 1e-3
  config.momentum = 0.9  # sgd only; 0 = plain SGD
  config.nesterov = False
  config.weight_decay = 0.0
  # What weight_decay decays: 'all' parameters, or only the 'kernels' (parameters of 2+ dimensions: conv and dense
  # kernels, not biases or BatchNorm scales and offsets), as flax's examples/imagenet does.
  config.weight_decay_params = "all"
  config.grad_clip_norm = 0.0  # 0 = no clipping
  config.label_smoothing = 0.0
  config.mixup_alpha = 0.0  # mixup's Beta(alpha, alpha) (Zhang et al. 2018; 0.2-0.4 typical); 0 = off
  # Evaluation (per-epoch validation and the final eval) also scores each image's mirror image and averages the two
  # softmaxes: test-time augmentation with the flip training already uses. The weights are the same either way.
  config.test_time_flip = False
  config.schedule = "constant"  # constant | piecewise | inverse_time | warmup_cosine | onecycle
  config.lr_drops = ()  # piecewise: ((epoch, lr), ...) meaning "lr from the epoch after `epoch` on"
  config.decay = config_dict.placeholder(float)  # inverse_time; None = learning_rate / num_epochs
  config.warmup_epochs = 0.0


def _run_fields(config: ml_collections.ConfigDict) -> None:
  """Early stopping, checkpoints, TensorBoard, transfer learning and the LR finder."""
  # Early stopping on a validation metric; patience 0 = off. restore_best_weights (Keras's EarlyStopping name):
  # eval.json, the exported model and restore() take the epoch best by `monitor`; False: the last epoch's
  # weights (Keras's default), for a run whose length, not the validation set, picks the model.
  config.early_stopping = ml_collections.ConfigDict(dict(monitor="val_loss", patience=0, restore_best_weights=True))
  config.keep_checkpoints = 2  # latest N checkpoints, besides the best
  config.checkpoint_every_steps = 0  # also save mid-epoch every N steps (0: at the end of each epoch only)
  config.nonfinite = "stop"  # a NaN/inf loss: 'stop' with the step number, or 'skip' the update
  config.seed = 0
  # TensorBoard (events in the workdir) gets the scalars of every epoch and the config as hparams; N > 0 also
  # writes Grad-CAM overlays of the first N validation images (predicted class) each epoch.
  config.tensorboard_explain_images = 0

  # Transfer learning (cnnjax/train/weights.py, optim.py, bottleneck.py). pretrained: a weight file, 'keras:mobilenet|vgg16|resnet50'
  # (the official Keras notop file, cached in ~/.cache/cnnjax/weights) or a train.py workdir; layers whose
  # shapes match are copied by name, the rest (the new head) start fresh.
  config.pretrained = ""
  config.freeze = ""  # regex, re.fullmatch on layer names: frozen params and BatchNorm statistics stay fixed
  config.freeze_first = 0  # also freeze the first N layers in forward order (cnnjax.explain.layer_names)
  # Sequential runs in <workdir>/phase1, phase2, ...: each a dict of overrides of this config; a phase starts
  # from the previous phase's best weights.
  config.phases = ()
  # layer != '': run the (pretrained) model once to this layer's output, cache the features under the
  # workdir and train a Dense head (relu, dropout per hidden layer) on them instead of the whole model.
  config.bottleneck = ml_collections.ConfigDict(dict(layer="", hidden=(512, 256), dropout=(0.5, 0.2)))

  # LR range test (cnnjax.train.lr_find): True runs it instead of training; writes lr_find.png / .json.
  config.lr_find = False
  config.lr_find_steps = 200  # one batch per learning rate, swept exponentially from min to max
  config.lr_find_min = 1e-7
  config.lr_find_max = 10.0


def _fail(message: str):
  raise ValueError(message)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ValueError for the first problem found in `config`."""
  for check in (_check_fields, _check_numbers, _check_choices, _check_run_settings):
    check(config)


# Group fields added after configs were written that replace the whole group: where missing, the code reads their
# default (`restores_best_weights`), which is what it did before them.
_ADDED_GROUP_FIELDS = frozenset({"restore_best_weights"})


def restores_best_weights(config) -> bool:
  """Whether a run's model is its best epoch by early_stopping.monitor (True where the group predates the field)."""
  return config.early_stopping.get("restore_best_weights", True)


def _check_fields(config: ml_collections.ConfigDict) -> None:
  """Every field known, present and of its default's kind."""
  defaults = default_config()
  for key in config.keys():
    if key not in defaults and key not in DERIVED_FIELDS:
      _fail(f"unknown config field {key!r}; valid fields: {', '.join(sorted(defaults.keys()))}")
  for key, default in defaults.items():
    if key not in config:
      _fail(f"config has no field {key!r}; start from configs/default.py (`config = default.get_config()`)")
    value = config[key]
    if default is not None and value is not None and not _same_kind(default, value):
      _fail(f"config.{key} should be a {type(default).__name__}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
      _fail(f"config.{key} must be a finite number, got {value}")
  for group, fields in (("early_stopping", ("monitor", "patience", "restore_best_weights")),
                        ("bottleneck", ("layer", "hidden", "dropout"))):
    unknown = sorted(set(config[group].keys()) - set(fields))
    if unknown:
      _fail(f"unknown config.{group} field(s) {unknown}; valid: {', '.join(fields)}")
    for field in fields:
      if field not in config[group] and field in _ADDED_GROUP_FIELDS:
        continue
      default, value = defaults[group][field], config[group].get(field)
      if not _same_kind(default, value):
        _fail(f"config.{group}.{field} should be a {type(default).__name__}, got {value!r}")


def _check_numbers(config: ml_collections.ConfigDict) -> None:
  if config.model not in models.names():
    _fail(f"unknown model {config.model!r}; choose one of {', '.join(models.names())}")
  for key in ("batch_size", "eval_batch_size", "num_epochs", "num_classes", "image_size", "channels",
              "keep_checkpoints"):
    if config[key] <= 0:
      _fail(f"config.{key} must be positive, got {config[key]}")
  for key in ("checkpoint_every_steps", "seed", "weight_decay", "grad_clip_norm", "momentum", "warmup_epochs",
              "in_memory_limit_gb"):
    if config[key] < 0:
      _fail(f"config.{key} must be >= 0, got {config[key]}")
  if config.channels not in (1, 3):
    _fail(f"config.channels must be 1 (grayscale) or 3 (RGB), got {config.channels}")
  if config.limit_per_class is not None and config.limit_per_class <= 0:
    _fail(f"config.limit_per_class must be positive or None, got {config.limit_per_class}")
  if not 0 <= config.label_smoothing < 1:
    _fail(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}")
  if config.get("mixup_alpha", 0.0) < 0:  # configs saved before the field did not mix
    _fail(f"config.mixup_alpha must be >= 0 (0 = off), got {config.mixup_alpha}")
  if config.decay is not None and config.decay < 0:
    _fail(f"config.decay must be >= 0 or None, got {config.decay}")
  if config.early_stopping.patience < 0:
    _fail(f"config.early_stopping.patience must be >= 0 (0 = off), got {config.early_stopping.patience}")
  if config.num_classes < 2:
    _fail(f"config.num_classes must be at least 2, got {config.num_classes}")
  if config.steps_per_epoch is not None and config.steps_per_epoch <= 0:
    _fail(f"config.steps_per_epoch must be positive or None, got {config.steps_per_epoch}")
  if config.learning_rate <= 0:
    _fail(f"config.learning_rate must be positive, got {config.learning_rate}")
  if not 0 <= config.validation_split < 1:
    _fail(f"config.validation_split must be in [0, 1), got {config.validation_split}")

def _check_choices(config: ml_collections.ConfigDict) -> None:
  if config.optimizer not in optim.OPTIMIZERS:
    _fail(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(optim.OPTIMIZERS)}")
  if config.weight_decay_params not in optim.WEIGHT_DECAY_PARAMS:
    _fail(f"unknown config.weight_decay_params {config.weight_decay_params!r}; choose one of "
          f"{', '.join(optim.WEIGHT_DECAY_PARAMS)}")
  if config.schedule not in optim.SCHEDULES:
    _fail(f"unknown schedule {config.schedule!r}; choose one of {', '.join(optim.SCHEDULES)}")
  if config.schedule == "piecewise" and not all(
      isinstance(drop, (tuple, list)) and len(drop) == 2 and all(_is_number(v) for v in drop)
      and drop[0] >= 0 and math.isfinite(drop[1]) and drop[1] > 0 for drop in config.lr_drops):
    _fail(f"config.lr_drops must be ((epoch, lr), ...) pairs with epoch >= 0 and lr > 0, got {config.lr_drops!r}")
  unknown_augment = set(config.augment.keys()) - set(AUGMENT_FIELDS)
  if unknown_augment:
    _fail(f"unknown augment setting(s) {sorted(unknown_augment)}; valid: {', '.join(AUGMENT_FIELDS)}")
  _check_augment(config.augment)
  _check_preprocess(config)
  monitor = config.early_stopping.monitor
  if monitor not in EARLY_STOPPING_MONITORS:
    _fail(f"unknown early_stopping.monitor {monitor!r}; choose one of {EARLY_STOPPING_MONITORS}")
  if config.early_stopping.patience and not config.validation_split:
    _fail("early stopping monitors validation metrics: set config.validation_split > 0 or patience=0")

def _check_run_settings(config: ml_collections.ConfigDict) -> None:
  if config.lr_find_steps < 2:
    _fail(f"config.lr_find_steps must be at least 2, got {config.lr_find_steps}")
  if not 0 < config.lr_find_min < config.lr_find_max:
    _fail(f"the LR finder needs 0 < config.lr_find_min < config.lr_find_max, got {config.lr_find_min} and "
          f"{config.lr_find_max}")
  if config.tensorboard_explain_images < 0:
    _fail(f"config.tensorboard_explain_images must be >= 0, got {config.tensorboard_explain_images}")
  if config.freeze_first < 0:
    _fail(f"config.freeze_first must be >= 0, got {config.freeze_first}")
  try:
    re.compile(config.freeze)
  except re.error as error:
    _fail(f"config.freeze={config.freeze!r} is not a valid regular expression ({error})")
  if config.phases and config.bottleneck.layer:
    _fail("config.phases and config.bottleneck.layer cannot be combined; use one or the other")
  if config.get("test_time_flip", False) and config.bottleneck.layer:
    _fail("config.test_time_flip mirrors images, but a bottleneck run (config.bottleneck.layer) evaluates features; "
          "set --config.test_time_flip=False")
  if len(config.bottleneck.hidden) != len(config.bottleneck.dropout):
    _fail(f"config.bottleneck.hidden {tuple(config.bottleneck.hidden)} and .dropout "
          f"{tuple(config.bottleneck.dropout)} need one rate per hidden layer")
  if config.nonfinite not in ("stop", "skip"):
    _fail(f"config.nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}")
  devices = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % devices:
      _fail(f"config.{key}={config[key]} is not divisible by the {devices} devices; use a multiple of {devices}")


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_augment(augment: ml_collections.ConfigDict) -> None:
  """The augmentation settings, checked as cnnjax.data.augment would check them inside the first step."""
  augment_lib = importlib.import_module("cnnjax.data.augment")  # the package exports a function of that name
  settings = augment.to_dict()
  flip = settings.pop("horizontal_flip", False)
  if not isinstance(flip, bool):
    _fail(f"config.augment.horizontal_flip should be a bool, got {flip!r}")
  for key, value in settings.items():
    pair = key == "zoom" and isinstance(value, (tuple, list)) and len(value) == 2
    if not (_is_number(value) or pair and all(_is_number(v) for v in value)):
      _fail(f"config.augment.{key} should be a number{' or a (low, high) pair' if key == 'zoom' else ''}, "
            f"got {value!r}")
  try:
    augment_lib._ranges(**{"rotation": 0.0, "width_shift": 0.0, "height_shift": 0.0, "shear": 0.0, "zoom": 0.0,
                           **settings})  # pylint: disable=protected-access
  except ValueError as error:
    _fail(f"config.augment.{error}")


def _check_preprocess(config: ml_collections.ConfigDict) -> None:
  preprocess_lib = importlib.import_module("cnnjax.data.preprocess")  # shadowed by a function too
  mode = config.preprocess
  if mode != "auto" and mode not in preprocess_lib.MODES:
    _fail(f"unknown config.preprocess {mode!r}; use auto or one of {', '.join(preprocess_lib.MODES)}")
  if mode in ("caffe", "torch") and config.channels != 3:
    _fail(f"config.preprocess={mode!r} needs RGB images: set config.channels=3 or another preprocess mode")
  if mode != "mean_std":
    return
  for key in ("mean", "std"):
    values = config[key]
    if values is None:
      _fail(f"config.preprocess='mean_std' needs config.{key} (per channel, in [0, 1] units)")
    if len(values) not in (1, config.channels) or not all(_is_number(v) and math.isfinite(v) for v in values):
      _fail(f"config.{key} needs 1 or {config.channels} finite numbers (one per channel), got {tuple(values)}")
  if not all(v > 0 for v in config.std):
    _fail(f"config.std must be positive (it divides the pixels), got {tuple(config.std)}")


def _same_kind(default: Any, value: Any) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(default, bool) == isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  if isinstance(default, ml_collections.ConfigDict):
    return isinstance(value, (ml_collections.ConfigDict, dict))
  return isinstance(value, type(default))


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


def changed_fields(saved: Dict, current: Dict) -> List[str]:
  """Dotted names of the fields that differ between two config dicts (JSON-normalised)."""
  saved, current = json.loads(json.dumps(saved, default=list)), json.loads(json.dumps(current, default=list))
  changed = []
  for key in sorted(set(saved) | set(current)):
    if key in DERIVED_FIELDS:
      continue
    before, after = saved.get(key), current.get(key)
    if isinstance(before, dict) and isinstance(after, dict):
      changed += [f"{key}.{sub}" for sub in changed_fields(before, after)]
    elif before != after:
      changed.append(key)
  return changed


def check_resumable(saved: Dict, current: Dict) -> None:
  """A rerun on an existing workdir may only continue the same run (or extend num_epochs).

  A field added to the config after the run was saved counts as its default there: new fields default to what
  the code did before them."""
  defaults = default_config().to_dict()
  saved = {**defaults, **{key: {**defaults[key], **value} if isinstance(defaults.get(key), dict)
                          and isinstance(value, dict) else value for key, value in saved.items()}}
  changed = [key for key in changed_fields(saved, current) if key not in RESUMABLE_CHANGES]
  if changed:
    _fail(f"the workdir holds a run with a different config (changed: {', '.join(changed)}); "
          "use a new --workdir, or rerun with the saved config.json")
  if current["num_epochs"] < saved["num_epochs"]:
    _fail(f"config.num_epochs={current['num_epochs']} is smaller than the workdir's run "
          f"({saved['num_epochs']}); use a new --workdir to train a shorter run")
