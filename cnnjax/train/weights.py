"""Where a run's weights come from: `restore(workdir)` (a finished or running train.py run), and the fresh
initialisation with `config.pretrained`'s layers copied in (a weight file, `keras:<arch>` or another workdir)."""
import functools
import os
from typing import Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cnnjax.models import introspect
from cnnjax.pretrained import merge
from cnnjax.train import checkpoint as checkpoint_lib
from cnnjax.train import config as config_lib
from cnnjax.train import experiment
from cnnjax.train import optim
from cnnjax.train import step as step_lib


def _read_config(workdir: str) -> ml_collections.ConfigDict:
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"{workdir} is not a train.py workdir (no config.json); pass the --workdir of a run")
  try:
    with open(config_path) as f:
      config = config_lib.from_json(f.read())
    config.get("phases")  # a JSON value that is not an object fails here, not later
    return config
  except (ValueError, AttributeError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
    raise _unusable(config_path, error) from None


def _unusable(config_path: str, error: Exception) -> ValueError:
  return ValueError(f"{config_path} is not a usable train.py config ({' '.join(str(error).split())[:300]}); "
                    "restore the workdir's config.json from a copy of the run")


def restore(workdir: str):
  """(model, variables, config) of a train.py run: the best checkpoint, else the latest (the latest where
  config.early_stopping.restore_best_weights is False)."""
  config = _read_config(workdir)
  if config.get("phases"):  # a phased run: the weights of its last phase
    return restore(os.path.join(workdir, f"phase{len(config.phases)}"))
  if config.get("bottleneck", {}).get("layer"):
    raise ValueError(f"{workdir} trained a dense head on {config.bottleneck.layer} features (a bottleneck run), "
                     f"not a whole model; its head's weights are {os.path.join(workdir, 'head.npz')}")
  try:
    model = experiment.create_model(config)
    tx = experiment.create_optimizer(config, model, optim.create_schedule(config, 1))
    abstract = jax.eval_shape(
        lambda: step_lib.create_train_state(model, tx, experiment.image_shape(config), config.seed))
  except (ValueError, AttributeError, KeyError, TypeError) as error:
    raise _unusable(os.path.join(workdir, "config.json"), error) from None
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                                    abstract)
  no_checkpoint = ValueError(f"{workdir} has no checkpoint yet; train first: python train.py --workdir {workdir} ...")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):  # reading must not create directories
    raise no_checkpoint
  checkpoints = checkpoint_lib.Checkpoints(workdir, config.keep_checkpoints)
  try:
    restored = checkpoints.restore_final(abstract, config_lib.restores_best_weights(config))
  finally:
    checkpoints.close()
  if restored is None:
    raise no_checkpoint
  return model, restored[0].variables, config


def _load_source(path: str, num_classes: int):
  """(model, variables, layers the source really holds) of a weight file or a train.py workdir."""
  if experiment.is_workdir(path):
    model, variables, _ = restore(path)
    return model, variables, None
  return merge.load_source(path, num_classes)


def load_pretrained(model: nn.Module, variables: Dict, config: ml_collections.ConfigDict) -> Dict:
  """`variables` (the model's fresh init) with the layers of `config.pretrained` copied in; prints one line."""
  source_model, source_variables, allowed = _load_source(experiment.resolve_source(config), config.num_classes)
  merge.check_same_architecture(source_model, model, config.pretrained)
  merged, loaded, new = merge.merge_layers(variables, source_variables, allowed)
  rank = {name: index for index, name in enumerate(introspect.layer_names(model, experiment.image_shape(config)))}
  loaded, new = (sorted(names, key=lambda name: rank.get(name, len(rank))) for names in (loaded, new))
  if not loaded:
    raise ValueError(f"config.pretrained={config.pretrained!r}: no layer of {config.model} fits the file's "
                     f"weights; check config.model and config.model_options")
  print(f"pretrained {config.pretrained}: loaded {len(loaded)} layers ({loaded[0]} .. {loaded[-1]}); "
        f"new: {', '.join(new) or 'none'}")
  return merged


def initial_variables(model: nn.Module, config: ml_collections.ConfigDict) -> Dict:
  """The model's variables initialised from config.seed, with config.pretrained's layers copied in."""
  image = jnp.zeros((1, *experiment.image_shape(config)), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(config.seed), image)
  variables = {collection: dict(layer_vars) for collection, layer_vars in variables.items()}
  return load_pretrained(model, variables, config) if config.pretrained else variables
