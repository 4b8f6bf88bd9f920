"""Where a training step's time goes, one convolution at a time: XLA vs PyTorch (oneDNN) on the exact conv
shapes of a model, for the forward pass and the two halves of the backward pass (gradient w.r.t. the input,
w.r.t. the kernel), interleaved in one process. Optionally re-runs itself under other XLA_FLAGS.

  python bench/conv_breakdown.py --model vgg16 [--flags=--xla_cpu_use_xnnpack=false --flags=...]

This script does not import cnnjax, so its first table is XLA's defaults (YNNPACK convolutions); cnnjax's own
setting is `--flags=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`.

Prints GFLOP/s per op and XLA / torch speed ratios; the totals weight each shape by its count in the model.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# (count in the model, batch, H, W, C_in, C_out, kernel, stride[, padding]): symmetric padding, kernel // 2 unless
# given (simple_cnn's second and fourth layers are Keras 'valid' convolutions)
SHAPES = {
    "vgg16": [(1, 64, 32, 32, 3, 64, 3, 1), (1, 64, 32, 32, 64, 64, 3, 1), (1, 64, 16, 16, 64, 128, 3, 1),
              (1, 64, 16, 16, 128, 128, 3, 1), (1, 64, 8, 8, 128, 256, 3, 1), (2, 64, 8, 8, 256, 256, 3, 1),
              (1, 64, 4, 4, 256, 512, 3, 1), (2, 64, 4, 4, 512, 512, 3, 1), (3, 64, 2, 2, 512, 512, 3, 1)],
    "resnet50": [(1, 16, 224, 224, 3, 64, 7, 2),
                 (2, 16, 56, 56, 256, 64, 1, 1), (3, 16, 56, 56, 64, 64, 3, 1), (4, 16, 56, 56, 64, 256, 1, 1),
                 (1, 16, 56, 56, 256, 128, 1, 1), (1, 16, 56, 56, 128, 128, 3, 2), (1, 16, 56, 56, 256, 512, 1, 2),
                 (4, 16, 28, 28, 128, 512, 1, 1), (3, 16, 28, 28, 512, 128, 1, 1), (3, 16, 28, 28, 128, 128, 3, 1),
                 (1, 16, 28, 28, 512, 256, 1, 1), (1, 16, 28, 28, 256, 256, 3, 2), (1, 16, 28, 28, 512, 1024, 1, 2),
                 (6, 16, 14, 14, 256, 1024, 1, 1), (5, 16, 14, 14, 1024, 256, 1, 1), (5, 16, 14, 14, 256, 256, 3, 1),
                 (1, 16, 14, 14, 1024, 512, 1, 1), (1, 16, 14, 14, 512, 512, 3, 2), (1, 16, 14, 14, 1024, 2048, 1, 2),
                 (3, 16, 7, 7, 512, 2048, 1, 1), (2, 16, 7, 7, 2048, 512, 1, 1), (2, 16, 7, 7, 512, 512, 3, 1)],
    "simple_cnn": [(1, 128, 32, 32, 3, 6, 3, 1), (1, 128, 32, 32, 6, 16, 3, 1, 0), (1, 128, 15, 15, 16, 16, 3, 1),
                   (1, 128, 15, 15, 16, 32, 3, 1, 0)],
    "resnet20": [(1, 128, 32, 32, 3, 16, 3, 1), (6, 128, 32, 32, 16, 16, 3, 1), (1, 128, 32, 32, 16, 32, 3, 2),
                 (5, 128, 16, 16, 32, 32, 3, 1), (1, 128, 16, 16, 32, 64, 3, 2), (5, 128, 8, 8, 64, 64, 3, 1)],
}


def conv_ops(batch, height, width, c_in, c_out, kernel, stride, pad=None):
  """{op: (xla call, torch call)} and the op's FLOPs (multiply-adds x 2)."""
  rng = np.random.default_rng(0)
  pad = kernel // 2 if pad is None else pad
  x = rng.standard_normal((batch, height, width, c_in), np.float32)
  w = rng.standard_normal((kernel, kernel, c_in, c_out), np.float32) * 0.05

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y, vjp = jax.vjp(conv, jnp.asarray(x), jnp.asarray(w))
  dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
  x_j, w_j = jnp.asarray(x), jnp.asarray(w)
  forward = jax.jit(conv)
  grad_input = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  grad_kernel = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])

  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  w_t = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
  dy_t = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())

  def torch_backward(mask):
    return lambda: torch.ops.aten.convolution_backward(dy_t, x_t, w_t, None, [stride] * 2, [pad] * 2, [1, 1],
                                                       False, [0, 0], 1, mask)
  flops = 2 * batch * y.shape[1] * y.shape[2] * c_out * c_in * kernel * kernel
  return flops, {
      "forward": (lambda: forward(x_j, w_j), lambda: torch.nn.functional.conv2d(x_t, w_t, None, stride, pad)),
      "grad input": (lambda: grad_input(x_j, w_j, dy), torch_backward([True, False, False])),
      "grad kernel": (lambda: grad_kernel(x_j, w_j, dy), torch_backward([False, True, False])),
  }


def measure(model: str, repeats: int, target: float) -> dict:
  rows, totals = [], {}
  for count, *shape in SHAPES[model]:
    flops, ops = conv_ops(*shape)
    calls = {(op, side): pair[index] for op, pair in ops.items() for index, side in enumerate(("xla", "torch"))}
    timed = common.interleave(calls, repeats=repeats, target_seconds=target)
    for op in ops:
      xla, torch_s = timed[(op, "xla")]["median_s"], timed[(op, "torch")]["median_s"]
      rows.append({"shape": "x".join(map(str, shape)), "count": count, "op": op,
                   "xla GFLOP/s": flops / xla / 1e9, "torch GFLOP/s": flops / torch_s / 1e9,
                   "xla / torch speed": torch_s / xla})
      total = totals.setdefault(op, [0.0, 0.0])
      total[0] += count * xla
      total[1] += count * torch_s
  for op, (xla, torch_s) in totals.items():
    rows.append({"shape": "total (weighted)", "op": op, "xla s": xla, "torch s": torch_s,
                 "xla / torch speed": torch_s / xla})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="vgg16", choices=sorted(SHAPES))
  parser.add_argument("--flags", action="append", default=[], help="extra XLA_FLAGS variants to re-run under")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--target", type=float, default=0.2)
  parser.add_argument("--json", action="store_true", help="(internal) print rows as JSON")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  if args.json:
    print(json.dumps(measure(args.model, args.repeats, args.target)))
    return
  columns = ["shape", "count", "op", "xla GFLOP/s", "torch GFLOP/s", "xla / torch speed", "xla s", "torch s"]
  for flags in [os.environ.get("XLA_FLAGS", "")] + args.flags:
    rows = json.loads(subprocess.run(
        [sys.executable, __file__, "--model", args.model, "--repeats", str(args.repeats), "--target",
         str(args.target), "--json"], env={**os.environ, "XLA_FLAGS": flags}, check=True, capture_output=True,
        text=True).stdout.strip().splitlines()[-1])
    print(f"\n### {args.model} convolutions, XLA_FLAGS={flags!r}, jax {jax.__version__}, torch {torch.__version__}\n")
    print(common.markdown(rows, columns), flush=True)


if __name__ == "__main__":
  main()
