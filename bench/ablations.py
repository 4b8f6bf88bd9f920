"""What each of cnnjax's XLA:CPU work-arounds buys, measured by turning it off: cnnjax's training step with and
without it, interleaved with PyTorch eager in one process (bench/run.py's rows and timer).

  python bench/ablations.py --models simple_cnn,resnet20,vgg16 [--repeats 5]

Ablations (each turns one work-around of cnnjax.models.xla_cpu off while the step is traced, with
`xla_cpu.kernels(disable=...)`; the others stay on):
  max_pool         flax's nn.max_pool (JAX's argmax reduce-window + scatter gradient) instead of xla_cpu.max_pool
  materialized     the identity instead of xla_cpu.materialized (ResNet block outputs left to XLA's fusion)
  conv_as_matmul   XLA's own (operand-swapped) convolutions on maps smaller than the kernel window
  strided_conv     JAX's input gradient of strided convolutions (a convolution over the stride-dilated output
                   gradient) instead of xla_cpu.strided_conv's col2im
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import run  # noqa: E402  (gives cnnjax's computations its XLA setting as compiler options, as bench/run.py does)
from cnnjax.models import xla_cpu  # noqa: E402

# which ablations can change a model's step (the others leave its program unchanged)
APPLIES = {"simple_cnn": ("max_pool",), "resnet20": ("materialized", "strided_conv"),
           "vgg16": ("max_pool", "conv_as_matmul"), "resnet50": ("max_pool", "materialized", "strided_conv")}


def without(ablation: str, call):
  """`call` whose first run (the trace and compile) has the work-around `ablation` turned off."""
  def wrapped():
    with xla_cpu.kernels(disable=(ablation,)):
      return call()
  return wrapped


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="simple_cnn,resnet20")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--target", type=float, default=1.0)
  args = parser.parse_args()
  rows = []
  for name in args.models.split(","):
    size, batch, classes, options = run.TRAIN_ROWS[name]
    info = {}
    calls = {"cnnjax": run.cnnjax_train(name, size, batch, classes, options, info, "cnnjax")}
    for ablation in APPLIES[name]:
      calls[f"cnnjax without {ablation}"] = without(ablation, run.cnnjax_train(
          name, size, batch, classes, options, info, ablation))
    calls["torch eager"] = run.torch_train(name, size, batch, classes, False, info)
    run.log(f"{name}: {', '.join(calls)}")
    timed = common.interleave(calls, repeats=args.repeats, target_seconds=args.target, log=run.log)
    cnnjax_speed = common.images_per_second(timed["cnnjax"], batch)
    for variant, result in timed.items():
      speed = common.images_per_second(result, batch)
      rows.append({"model": name, "batch": batch, "variant": variant, "compile s": result.get("compile_s"),
                   "images/s": speed, "cnnjax / this": common.ratio(cnnjax_speed, speed),
                   "error": result.get("error")})
  common.print_report(rows, ["model", "batch", "variant", "compile s", "images/s", "cnnjax / this", "error"])


if __name__ == "__main__":
  main()
