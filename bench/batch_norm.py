"""Training-mode BatchNorm + ReLU, forward and backward, on ResNet50's map sizes: cnnjax's layer (flax's
BatchNorm differentiated by JAX) against PyTorch eager and torch.compile, and against a candidate normalisation
with a hand-written VJP (two sums in the backward), interleaved. The open lead of bench/RESULTS.md's resnet50 row.

  python bench/batch_norm.py [--batch 16]
"""
import argparse
import functools
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import torch
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402
from cnnjax.models import layers  # noqa: E402

EPSILON = 1.001e-5  # ResNet50's
MAPS = [(112, 64), (56, 64), (56, 256), (28, 512), (14, 1024)]  # (H = W, channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def two_sum_normalize(inputs, scale, bias, epsilon):
  return _normalize_forward(inputs, scale, bias, epsilon)[0]


def _normalize_forward(inputs, scale, bias, epsilon):
  mean = jnp.mean(inputs, (0, 1, 2))
  variance = jnp.maximum(jnp.mean(inputs * inputs, (0, 1, 2)) - mean * mean, 0)  # flax's fast variance
  inverse = lax.rsqrt(variance + epsilon)
  return (inputs - mean) * (inverse * scale) + bias, (inputs, mean, inverse, scale)


def _normalize_backward(epsilon, residuals, cotangents):
  del epsilon
  inputs, mean, inverse, scale = residuals
  count = inputs.shape[0] * inputs.shape[1] * inputs.shape[2]
  normalized = (inputs - mean) * inverse
  bias_gradient = jnp.sum(cotangents, (0, 1, 2))
  scale_gradient = jnp.sum(cotangents * normalized, (0, 1, 2))
  input_gradient = (scale * inverse) * (cotangents - bias_gradient / count - normalized * (scale_gradient / count))
  return input_gradient, scale_gradient, bias_gradient


two_sum_normalize.defvjp(_normalize_forward, _normalize_backward)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  rows = []
  for size, channels in MAPS:
    shape = (args.batch, size, size, channels)
    inputs = jax.random.normal(jax.random.PRNGKey(0), shape) * 2 + 1
    layer = layers.batch_norm(True, name="bn", epsilon=EPSILON)
    variables = layer.init(jax.random.PRNGKey(1), inputs)

    def flax_loss(params, inputs):
      outputs, _ = layer.apply({"params": params, "batch_stats": variables["batch_stats"]}, inputs,
                               mutable=["batch_stats"])
      return jnp.sum(jax.nn.relu(outputs) * inputs)

    def two_sum_loss(params, inputs):
      return jnp.sum(jax.nn.relu(two_sum_normalize(inputs, params["scale"], params["bias"], EPSILON)) * inputs)

    flax_step = jax.jit(jax.grad(flax_loss, argnums=(0, 1)))
    two_sum_step = jax.jit(jax.grad(two_sum_loss, argnums=(0, 1)))
    params = variables["params"]
    difference = max(float(jnp.max(jnp.abs(want - have)) / jnp.max(jnp.abs(want))) for want, have in zip(
        jax.tree_util.tree_leaves(flax_step(params, inputs)), jax.tree_util.tree_leaves(two_sum_step(params, inputs))))

    torch_inputs = torch.randn(args.batch, channels, size, size, requires_grad=True)
    torch_layer = torch.nn.BatchNorm2d(channels, eps=EPSILON).train()

    def torch_loss(inputs):
      return (torch.relu(torch_layer(inputs)) * inputs).sum()

    def torch_step(loss):
      torch_inputs.grad = None
      loss(torch_inputs).backward()

    compiled_loss = torch.compile(torch_loss)
    timed = common.interleave({
        "cnnjax (flax)": lambda: flax_step(params, inputs),
        "two-sum VJP": lambda: two_sum_step(params, inputs),
        "torch eager": lambda: torch_step(torch_loss),
        "torch.compile": lambda: torch_step(compiled_loss)}, repeats=args.repeats, target_seconds=0.3)
    milliseconds = {name: 1e3 * result["median_s"] for name, result in timed.items()}
    rows.append({"map (N x H x W x C)": "x".join(map(str, shape)), **{f"{k} ms": v for k, v in milliseconds.items()},
                 "cnnjax / torch.compile speed": milliseconds["torch.compile"] / milliseconds["cnnjax (flax)"],
                 "two-sum / flax speed": milliseconds["cnnjax (flax)"] / milliseconds["two-sum VJP"],
                 "two-sum max rel diff": difference})
  common.print_report(rows)


if __name__ == "__main__":
  main()
