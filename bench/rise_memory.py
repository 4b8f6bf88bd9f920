"""Peak resident memory of RISE on a random-init ResNet50 at 224px, batch 8 (issue #14: 4,000 masks under 4 GB).

  /usr/bin/time -v python bench/rise_memory.py 4000      # prints the call's time and the process's peak RSS
"""
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cnnjax import explain, models  # noqa: E402


def main():
  masks = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
  model = models.create("resnet50", num_classes=1000)
  images = jax.random.normal(jax.random.PRNGKey(1), (8, 224, 224, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), images[:1])
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  started = time.time()
  maps = explain.rise(model, variables, images, jnp.arange(8), masks=masks).block_until_ready()
  print(f"masks={masks} maps={maps.shape} finite={bool(jnp.isfinite(maps).all())} "
        f"seconds={time.time() - started:.1f} peak_rss_before_rise={before:.2f} GiB "
        f"peak_rss={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
  main()
