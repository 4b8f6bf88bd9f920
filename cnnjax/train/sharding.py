"""Data parallelism over every device of every host: batch on the `data` axis, state replicated."""
from typing import Dict

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data"))


def global_batch(batch: Dict, sharding: NamedSharding) -> Dict:
  """This process's share of a batch -> one global array sharded over every device of every host."""
  return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}
