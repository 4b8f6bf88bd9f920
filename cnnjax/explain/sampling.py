"""What the sampled and perturbation explainers share: chunked sums over many samples inside one jitted call
(memory bounded by the chunk, not the sample count), and random keys tied to each image's content rather than
its position in the batch (an image gets the same noise alone as inside any batch)."""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

# Copies of the batch evaluated per model call by default: enough to keep the CPU busy on small models, while a
# ResNet50 backward at 224px (about 0.1 GB per image) still fits in memory.
IMAGES_PER_CALL = 32


def check_chunk_size(chunk_size: Optional[int], batch: int, samples: int, what: str = "samples") -> int:
  """`chunk_size` (samples per model call) if given and positive, else about IMAGES_PER_CALL images per call."""
  if chunk_size is None:
    return max(1, min(samples, IMAGES_PER_CALL // batch))
  if int(chunk_size) < 1:
    raise ValueError(f"chunk_size must be a positive number of {what} per model call; got {chunk_size}")
  return min(int(chunk_size), samples)


def chunked_sum(evaluate: Callable, samples: int, chunk_size: int):
  """sum over s < samples of evaluate's per-sample results, `chunk_size` samples per call.

  Args:
    evaluate: (n,) int32 sample indices -> a pytree of arrays summed over those n samples.
    samples: how many samples in all; chunk_size: samples per call of `evaluate` (the memory bound).
  Returns:
    The pytree of sums. Full chunks run in a `lax.scan` (compiled once); a remainder runs as one more call.
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
      first, _ = jax.lax.scan(body, first, starts)
    total = first
  if remainder:
    rest = evaluate(full * chunk_size + jnp.arange(remainder, dtype=jnp.int32))
    total = rest if total is None else jax.tree_util.tree_map(jnp.add, total, rest)
  return total


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
