"""How far a forward-only explainer can lead its PyTorch peer on this CPU: the arithmetic bound, in one run.

  python bench/forward_bound.py [--repeats 3]

Occlusion (captum's Occlusion) and Score-CAM (pytorch-grad-cam's ScoreCAM) are thousands of plain forward passes
of the same model in both frameworks: on resnet20 at batch 32 with a 4x4 window and stride 2, 225 window positions
and the unoccluded batch, 7,232 images. Neither can skip any of that arithmetic, so the ratio of their times is
at most the ratio of the two frameworks' forward rates, and cnnjax's forward rate is at most the machine's matrix
multiply rate. This measures, side by side: the float32 matrix-multiply rate of XLA and of torch (4096^3, the
machine's practical peak), resnet20's forward in cnnjax (as occlusion's chunks run it) and in torch (as captum's
`perturbations_per_eval=64` runs it) with XLA's FLOP count per image, and both occlusions; then the cnnjax forward
as a share of the peak, captum's occlusion against torch's forward of the same images, and the best ratio cnnjax
could reach computing at the peak. Prints Markdown for bench/RESULTS.md and writes
bench/results/<date>-forward-bound.{json,md}.
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import common  # noqa: E402
import peers  # noqa: E402  (tests/peers.py: the same weights in torch and cnnjax)
from cnnjax import explain  # noqa: E402
from cnnjax.explain import features, sampling  # noqa: E402
from cnnjax.models import onednn, xla_cpu  # noqa: E402

SHARED = HERE.parent.parent / "shared"
MATMUL = 4096
BATCH, WINDOW, STRIDE, PEER_CHUNK = 32, 4, 2, 64  # explain_peers.py's occlusion row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--target", type=float, default=1.0, help="seconds per timed repeat")
  args = parser.parse_args()
  torch.set_num_threads(max(1, torch.get_num_threads()))
  onednn.available()
  torch_model, model, variables = peers.resnet20_pair(SHARED)
  positions = ((32 - WINDOW) // STRIDE + 1) ** 2
  images_per_call = BATCH * (positions + 1)

  rng = np.random.default_rng(1)
  images = rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32)
  targets = rng.integers(0, 10, BATCH)
  chunk = sampling.check_chunk_size(None, model, jnp.asarray(images), positions)
  ours_batch = jnp.asarray(np.tile(images, (chunk, 1, 1, 1)))  # one of occlusion's model calls
  theirs_batch = peers.nchw(np.tile(images, (PEER_CHUNK, 1, 1, 1)))  # one of captum's
  with xla_cpu.kernels("portable"):  # XLA counts no FLOPs inside oneDNN's custom calls
    flops_per_image = common.xla_flops(lambda v, x: features.apply_logits(model, v, x), variables,
                                       ours_batch) / ours_batch.shape[0]

  matrix = jnp.ones((MATMUL, MATMUL), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  torch_matrix = torch.ones(MATMUL, MATMUL)
  forward = jax.jit(lambda v, x: features.apply_logits(model, v, x))
  occlusion = jax.jit(lambda v, x, t: explain.occlusion(model, v, x, t, window=WINDOW, strides=STRIDE))
  import captum.attr  # pylint: disable=import-outside-toplevel
  captum_occlusion = captum.attr.Occlusion(torch_model)
  x = peers.nchw(images)

  def torch_forward():
    with torch.inference_mode():
      return torch_model(theirs_batch)

  calls = {
      "xla matmul": lambda: matmul(matrix),
      "torch matmul": lambda: torch_matrix @ torch_matrix,
      "cnnjax forward": lambda: forward(variables, ours_batch),
      "torch forward": torch_forward,
      "cnnjax occlusion": lambda: occlusion(variables, jnp.asarray(images), jnp.asarray(targets)),
      "captum occlusion": lambda: captum_occlusion.attribute(
          x, target=[int(t) for t in targets], sliding_window_shapes=(3, WINDOW, WINDOW),
          strides=(3, STRIDE, STRIDE), baselines=0.0, perturbations_per_eval=PEER_CHUNK),
  }
  timed = common.interleave(calls, repeats=args.repeats, target_seconds=args.target, log=print)
  seconds = {name: result["median_s"] for name, result in timed.items()}
  peak = max(2 * MATMUL ** 3 / seconds["xla matmul"], 2 * MATMUL ** 3 / seconds["torch matmul"])
  ours_rate = ours_batch.shape[0] / seconds["cnnjax forward"]
  theirs_rate = theirs_batch.shape[0] / seconds["torch forward"]
  at_peak = images_per_call * flops_per_image / peak
  rows = [
      {"what": "matmul peak (best of XLA, torch)", "value": peak / 1e9, "unit": "GFLOP/s"},
      {"what": "resnet20 forward, XLA FLOPs per image", "value": flops_per_image / 1e6, "unit": "MFLOP"},
      {"what": f"cnnjax forward (batch {ours_batch.shape[0]})", "value": ours_rate, "unit": "images/s",
       "share of peak": ours_rate * flops_per_image / peak},
      {"what": f"torch forward (batch {theirs_batch.shape[0]})", "value": theirs_rate, "unit": "images/s",
       "share of peak": theirs_rate * flops_per_image / peak},
      {"what": f"cnnjax occlusion ({images_per_call} images)", "value": seconds["cnnjax occlusion"], "unit": "s",
       "share of peak": at_peak / seconds["cnnjax occlusion"]},
      {"what": "captum occlusion", "value": seconds["captum occlusion"], "unit": "s",
       "share of peak": at_peak / seconds["captum occlusion"]},
      {"what": "captum occlusion / torch forward of the same images", "unit": "x",
       "value": seconds["captum occlusion"] / (images_per_call / theirs_rate)},
      {"what": "speed-up, captum / cnnjax occlusion", "value": seconds["captum occlusion"] / seconds[
          "cnnjax occlusion"], "unit": "x"},
      {"what": "ceiling: captum / (cnnjax's arithmetic at the peak)", "value": seconds["captum occlusion"] / at_peak,
       "unit": "x"},
  ]
  columns = ["what", "value", "unit", "share of peak"]
  common.print_report(rows, columns)
  stem = HERE / "results" / f"{datetime.date.today().isoformat()}-forward-bound"
  environment = {**common.environment(), "onednn": onednn.version(), "occlusion chunk": chunk}
  stem.with_suffix(".json").write_text(json.dumps({"environment": environment, "rows": rows, "timed": timed},
                                                  indent=1, default=float))
  stem.with_suffix(".md").write_text(common.markdown(rows, columns) + "\n")


if __name__ == "__main__":
  main()
