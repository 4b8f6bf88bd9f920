"""What the sampled and perturbation explainers share: chunked sums over many samples inside one jitted call
(memory bounded by the chunk, not the sample count), and random keys tied to each image's content rather than
its position in the batch (an image gets the same noise alone as inside any batch)."""
import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from cnnjax.models import introspect

# Activation memory one model call may take by default. Few large calls beat many small ones: a chunk loop of
# resnet20 backward passes at 32 images per call ran 5x slower than one call of all 1,024 path points on XLA:CPU;
# 2 GiB still keeps a ResNet50 backward at 224px (about 0.2 GB per image by this estimate) to a few images a call.
CHUNK_BYTES = 2 * 2**30


@functools.lru_cache(maxsize=64)
def _activation_bytes(model, image_shape, dtype) -> int:
  """Bytes of every layer's float32 output for one image, twice (forward values kept for the backward and their
  cotangents): an upper estimate, as a block's output also counts once per layer inside it."""
  infos = introspect.layer_infos(model, image_shape, dtype)
  return max(1, 2 * 4 * sum(math.prod(info.shape) for info in infos))


def check_chunk_size(chunk_size: Optional[int], model, images, samples: int, what: str = "samples") -> int:
  """`chunk_size` (samples per model call) if given and positive; else as many copies of the batch as fit
  CHUNK_BYTES of activations (`samples` at most)."""
  if chunk_size is None:
    model = introspect.static_model(introspect.unwrap_model(model))
    per_copy = images.shape[0] * _activation_bytes(model, tuple(images.shape[1:]), jnp.dtype(images.dtype))
    return max(1, min(samples, CHUNK_BYTES // per_copy))
  if int(chunk_size) < 1:
    raise ValueError(f"chunk_size must be a positive number of {what} per model call; got {chunk_size}")
  return min(int(chunk_size), samples)


# XLA:CPU ran convolutions inside a while loop about 7x slower than the same convolutions unrolled (resnet20
# integrated gradients, 32 chunks: 10.4 s looped, 1.4 s unrolled, 5.5 s more compilation); GPUs and TPUs loop
# at full speed, so only CPU programs unroll, up to this many chunks.
_UNROLLED_ON_CPU = 32


def _scan(body, carry, starts):
  """`lax.scan(body, carry, starts)`, as straight-line code on CPU up to _UNROLLED_ON_CPU steps (`unroll=True` is
  no help there: a scan of length 1 still compiles to a while loop)."""
  if jax.default_backend() != "cpu" or len(starts) > _UNROLLED_ON_CPU:
    return jax.lax.scan(body, carry, starts)
  outputs = []
  for start in starts:
    carry, output = body(carry, start)
    outputs.append(output)
  return carry, jax.tree_util.tree_map(lambda *parts: jnp.stack(parts), *outputs)


def chunked_sum(evaluate: Callable, samples: int, chunk_size: int):
  """sum over s < samples of evaluate's per-sample results, `chunk_size` samples per call.

  Args:
    evaluate: (n,) int32 sample indices -> a pytree of arrays summed over those n samples.
    samples: how many samples in all; chunk_size: samples per call of `evaluate` (the memory bound).
  Returns:
    The pytree of sums. Full chunks run in a `lax.scan` (unrolled on CPU, see `_UNROLLED_ON_CPU`); a remainder
    runs as one more call.
  """
  full, remainder = divmod(samples, chunk_size)
  total = None
  if full:
    first = evaluate(jnp.arange(chunk_size, dtype=jnp.int32))
    if full > 1:
      def body(carry, start):
        part = evaluate(start + jnp.arange(chunk_size, dtype=jnp.int32))
        return jax.tree_util.tree_map(jnp.add, carry, part), None
      starts = chunk_size * jnp.arange(1, full, dtype=jnp.int32)
      first, _ = _scan(body, first, starts)
    total = first
  if remainder:
    rest = evaluate(full * chunk_size + jnp.arange(remainder, dtype=jnp.int32))
    total = rest if total is None else jax.tree_util.tree_map(jnp.add, total, rest)
  return total


def chunked_stack(evaluate: Callable, samples: int, chunk_size: int):
  """Every sample's results, `chunk_size` samples per call of `evaluate`, for the methods that combine the samples
  otherwise than by a sum (occlusion, ablation, KernelSHAP's regression, the metrics' correlations and maxima).

  Args:
    evaluate: (n,) int32 sample indices -> a pytree of arrays with a leading axis of n.
    samples: how many samples in all; chunk_size: samples per call of `evaluate` (the memory bound).
  Returns:
    The pytree with a leading axis of `samples`: full chunks in a `lax.scan` (unrolled on CPU), a remainder as one
    more call.
  """
  full, remainder = divmod(samples, chunk_size)
  parts = []
  if full:
    def body(carry, start):
      return carry, evaluate(start + jnp.arange(chunk_size, dtype=jnp.int32))
    _, stacked = _scan(body, None, chunk_size * jnp.arange(full, dtype=jnp.int32))
    parts.append(jax.tree_util.tree_map(lambda a: a.reshape(full * chunk_size, *a.shape[2:]), stacked))
  if remainder:
    parts.append(evaluate(full * chunk_size + jnp.arange(remainder, dtype=jnp.int32)))
  return jax.tree_util.tree_map(lambda *arrays: jnp.concatenate(arrays), *parts)


def image_keys(images, seed) -> jax.Array:
  """(B,) PRNG keys, one per image, from `seed` and a hash of the image's pixels (not its batch position)."""
  def key_of(image):
    bits = jax.lax.bitcast_convert_type(image.astype(jnp.float32), jnp.uint32).reshape(-1)
    # A position-weighted sum (mod 2^32): a different image, or the same pixels moved, gets another key.
    weights = (2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1)
    digest = jnp.sum(bits * weights, dtype=jnp.uint32) ^ jnp.sum(bits ^ (weights * jnp.uint32(0x9E3779B9)),
                                                               dtype=jnp.uint32)
    return jax.random.fold_in(jax.random.PRNGKey(seed), digest)
  return jax.vmap(key_of)(images)


def sample_keys(keys, samples) -> jax.Array:
  """(n, B) keys: image b's key for each of the sample indices `samples` (n,)."""
  return jax.vmap(lambda s: jax.vmap(lambda key: jax.random.fold_in(key, s))(keys))(samples)
