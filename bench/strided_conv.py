"""The input gradient of strided convolutions: JAX's rule (a convolution over the stride-dilated output gradient)
against cnnjax's col2im (`xla_cpu.strided_conv`), each in time per forward pass of the same layer, interleaved.

  python bench/strided_conv.py [--batch 8]

Shapes: ResNet50's strided layers (1x1/2 projections, 3x3/2, the 7x7/2 stem), resnet20's 3x3/2, and AlexNet's
11x11/4 stem (above `xla_cpu._COL2IM_MAX_TAPS`, so Conv keeps JAX's rule there).
"""
import argparse
import sys
from pathlib import Path

import jax
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402
from cnnjax.models import xla_cpu  # noqa: E402  (importing cnnjax sets its XLA:CPU flag)

# (batch or None for --batch, H=W, C_in, C_out, kernel, stride, padding)
SHAPES = [(None, 56, 256, 512, 1, 2, "VALID"), (None, 28, 512, 1024, 1, 2, "VALID"),
          (None, 56, 128, 128, 3, 2, ((1, 1), (1, 1))), (None, 28, 256, 256, 3, 2, ((1, 1), (1, 1))),
          (None, 224, 3, 64, 7, 2, ((3, 3), (3, 3))), (128, 32, 16, 32, 3, 2, ((1, 1), (1, 1))),
          (128, 16, 32, 64, 3, 2, ((1, 1), (1, 1))), (None, 224, 3, 64, 11, 4, ((2, 2), (2, 2)))]


def lax_conv(inputs, kernel, strides, padding):
  return lax.conv_general_dilated(inputs, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rows = []
  for batch, size, channels, features, kernel_size, stride, padding in SHAPES:
    batch = batch or args.batch
    inputs = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, channels))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (kernel_size, kernel_size, channels, features)) * 0.05
    strides = (stride, stride)
    cotangents = jax.random.normal(jax.random.PRNGKey(2), lax_conv(inputs, kernel, strides, padding).shape)

    def input_gradient(conv):
      return jax.jit(lambda inputs, kernel, cotangents: jax.vjp(
          lambda inputs: conv(inputs, kernel, strides, padding), inputs)[1](cotangents)[0])

    forward = jax.jit(lambda inputs, kernel: lax_conv(inputs, kernel, strides, padding))
    jax_rule, col2im = input_gradient(lax_conv), input_gradient(xla_cpu.strided_conv)
    timed = common.interleave({"forward": lambda: forward(inputs, kernel),
                               "JAX's rule": lambda: jax_rule(inputs, kernel, cotangents),
                               "col2im": lambda: col2im(inputs, kernel, cotangents)},
                              repeats=args.repeats, target_seconds=0.3)
    seconds = {name: result["median_s"] for name, result in timed.items()}
    rows.append({"shape (N, H, C_in, C_out, k, stride)": f"{batch}x{size}x{channels}x{features}x{kernel_size}/{stride}",
                 "forward ms": 1e3 * seconds["forward"],
                 "JAX's rule x forward": seconds["JAX's rule"] / seconds["forward"],
                 "col2im x forward": seconds["col2im"] / seconds["forward"],
                 "col2im speedup": seconds["JAX's rule"] / seconds["col2im"]})
  common.print_report(rows)


if __name__ == "__main__":
  main()
