"""Explainer throughput and cost relative to one forward pass, on this machine.

  python bench/explain_speed.py [--quick] [--repeats 5]

For simple_cnn (32px) and resnet50 (224px) at batch 1 and 32: images/s of a plain forward pass, saliency,
guided backprop, Grad-CAM and guided Grad-CAM, each after its compilation (compile time reported separately),
the median of `--repeats` interleaved rounds (bench/common.py), and each explainer's time and XLA FLOP count
divided by those of the forward pass of the same batch (the goal: Grad-CAM <= 1.3x, saliency <= 3x). Prints a
Markdown table for bench/RESULTS.md. The side-by-side comparison with captum and pytorch-grad-cam is run.py's.
"""
import argparse
import datetime
import functools
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from cnnjax import explain, models  # noqa: E402

CASES = (("simple_cnn", 32, 10), ("resnet50", 224, 1000))

@functools.lru_cache(maxsize=None)
def _jitted_forward(model):
  return jax.jit(functools.partial(model.apply, train=False))


METHODS = {
    "forward": lambda model, variables, images, targets: _jitted_forward(model)(variables, images),
    "saliency": lambda *args: explain.saliency(*args),
    "guided": lambda *args: explain.saliency(*args, modifier="guided"),
    "gradcam": lambda *args: explain.gradcam(*args),
    "guided_gradcam": lambda *args: explain.guided_gradcam(*args),
}


def random_variables(model, image_size: int):
  """Parameters with the right shapes without paying for a real init (values do not change the speed)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jnp.zeros((1, image_size, image_size, 3)))
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.05, s.shape), s.dtype)
                                if s.ndim > 1 else jnp.ones(s.shape, s.dtype), shapes)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="batch 1 and 8 for resnet50, 3 repeats")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  repeats = 3 if args.quick else args.repeats
  print(f"# explain_speed: {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__}, flax {flax.__version__}, backend {jax.default_backend()}")
  rows = []
  for name, image_size, num_classes in CASES:
    model = models.create(name, num_classes=num_classes)
    variables = random_variables(model, image_size)
    for batch in (1, 8 if args.quick and name == "resnet50" else 32):
      images = jnp.asarray(np.random.default_rng(1).random((batch, image_size, image_size, 3)), jnp.float32)
      targets = jnp.arange(batch) % num_classes
      timed = common.interleave({method: functools.partial(function, model, variables, images, targets)
                                 for method, function in METHODS.items()}, repeats=repeats, target_seconds=0.5)
      flops = {method: common.xla_flops(lambda v, x, t, f=function: f(model, v, x, t), variables, images, targets)
               for method, function in METHODS.items()}
      for method, result in timed.items():
        rows.append({"model": f"{name} {image_size}px", "batch": batch, "method": method,
                     "compile s": result["compile_s"], "median s": result["median_s"],
                     "images/s": batch / result["median_s"],
                     "time x forward": result["median_s"] / timed["forward"]["median_s"],
                     "FLOPs x forward": flops[method] / flops["forward"]})
      print(common.markdown(rows[-len(timed):], list(rows[-1])), flush=True)


if __name__ == "__main__":
  main()
