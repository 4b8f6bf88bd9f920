"""How far a forward-only explainer can lead its PyTorch peer on this CPU: the arithmetic bound, in one run.

  python bench/forward_bound.py [--repeats 3] [--out STEM]

Occlusion (captum's Occlusion) and Score-CAM (pytorch-grad-cam's ScoreCAM) are thousands of plain forward passes
of the same model in both frameworks: on resnet20 at batch 32 with a 4x4 window and stride 2, 225 window positions
and the unoccluded batch, 7,232 images. Neither can skip any of that arithmetic, so the ratio of their times is
at most the ratio of the two frameworks' forward rates, and cnnjax's forward rate is at most the machine's matrix
multiply rate. This measures, side by side: the float32 matrix-multiply rate of XLA and of torch (4096^3, the
machine's practical peak), resnet20's forward in cnnjax (as occlusion's chunks run it) and in torch (as captum's
`perturbations_per_eval=64` runs it) with XLA's FLOP count per image, and both occlusions; then the cnnjax forward
as a share of the peak, captum's occlusion against torch's forward of the same images, and the best ratio cnnjax
could reach computing at the peak. The same forward rates for ResNet50 at 224 px (a random-weight torchvision
ResNet50; cnnjax at batch 8, as Score-CAM at batch 8 calls it one channel at a time, torch at pytorch-grad-cam's
batch_size=64) bound Score-CAM's ratio the same way. cnnjax's forward is timed twice: as `apply_logits` (each
convolution's BatchNorm, residual add and ReLU one XLA pass after it) and as `forward_logits`, the fused forward
the perturbation explainers run (cnnjax.models.fusion: one oneDNN call per chain). Prints Markdown for
bench/RESULTS.md and writes bench/results/<date>-forward-bound.{json,md}.
"""
import argparse
import datetime
import json
import sys
import tempfile
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


def _matmul_call(matmul, matrix):
  return lambda: matmul(matrix)


def _forward_call(model, variables, batch, logits=features.apply_logits):
  forward = jax.jit(lambda v, x: logits(model, v, x))
  batch = jnp.asarray(batch)
  return lambda: forward(variables, batch)


def _torch_forward_call(model, batch):
  def forward():
    with torch.inference_mode():
      return model(batch)
  return forward


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--target", type=float, default=1.0, help="seconds per timed repeat")
  parser.add_argument("--out", help="result files' stem (default: bench/results/<date>-forward-bound)")
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
  with tempfile.TemporaryDirectory() as workdir:
    resnet50_torch, resnet50, resnet50_variables = peers.resnet50_pair(workdir)
  # (cnnjax model, variables, its batch, torch model, its batch): one model call of each explainer.
  forwards = {
      "resnet20": (model, variables, np.tile(images, (chunk, 1, 1, 1)), torch_model, np.tile(images, (
          PEER_CHUNK, 1, 1, 1))),
      "resnet50": (resnet50, resnet50_variables, rng.normal(size=(8, 224, 224, 3)).astype(np.float32),
                   resnet50_torch, rng.normal(size=(64, 224, 224, 3)).astype(np.float32)),
  }
  flops_per_image = {}
  calls = {"xla matmul": _matmul_call(jax.jit(lambda a: a @ a), jnp.ones((MATMUL, MATMUL), jnp.float32)),
           "torch matmul": _matmul_call(lambda a: a @ a, torch.ones(MATMUL, MATMUL))}
  for name, (ours, ours_variables, ours_batch, theirs, theirs_batch) in forwards.items():
    with xla_cpu.kernels("portable"):  # XLA counts no FLOPs inside oneDNN's custom calls
      flops_per_image[name] = common.xla_flops(lambda v, x, m=ours: features.apply_logits(m, v, x),
                                               ours_variables, ours_batch) / len(ours_batch)
    calls[f"cnnjax {name}"] = _forward_call(ours, ours_variables, ours_batch)
    calls[f"cnnjax {name} fused"] = _forward_call(ours, ours_variables, ours_batch, features.forward_logits)
    calls[f"torch {name}"] = _torch_forward_call(theirs, peers.nchw(theirs_batch))
  occlusion = jax.jit(lambda v, x, t: explain.occlusion(model, v, x, t, window=WINDOW, strides=STRIDE))
  import captum.attr  # pylint: disable=import-outside-toplevel
  captum_occlusion = captum.attr.Occlusion(torch_model)
  x = peers.nchw(images)
  calls["cnnjax occlusion"] = lambda: occlusion(variables, jnp.asarray(images), jnp.asarray(targets))
  calls["captum occlusion"] = lambda: captum_occlusion.attribute(
      x, target=[int(t) for t in targets], sliding_window_shapes=(3, WINDOW, WINDOW),
      strides=(3, STRIDE, STRIDE), baselines=0.0, perturbations_per_eval=PEER_CHUNK)
  timed = common.interleave(calls, repeats=args.repeats, target_seconds=args.target, log=print)
  seconds = {name: result["median_s"] for name, result in timed.items()}
  peak = max(2 * MATMUL ** 3 / seconds["xla matmul"], 2 * MATMUL ** 3 / seconds["torch matmul"])
  rows = [{"what": "matmul peak (best of XLA, torch)", "value": peak / 1e9, "unit": "GFLOP/s"}]
  rate = {}
  for name, (_, _, ours_batch, _, theirs_batch) in forwards.items():
    rows.append({"what": f"{name} forward, XLA FLOPs per image", "value": flops_per_image[name] / 1e6,
                 "unit": "MFLOP"})
    for framework, batch in (("cnnjax", ours_batch), ("torch", theirs_batch)):
      rate[framework, name] = len(batch) / seconds[f"{framework} {name}"]
      rows.append({"what": f"{framework} {name} forward (batch {len(batch)})", "value": rate[framework, name],
                   "unit": "images/s", "share of peak": rate[framework, name] * flops_per_image[name] / peak})
    rate["cnnjax fused", name] = len(ours_batch) / seconds[f"cnnjax {name} fused"]
    rows.append({"what": f"cnnjax {name} fused forward (batch {len(ours_batch)}, the explainers' copies)",
                 "value": rate["cnnjax fused", name], "unit": "images/s",
                 "share of peak": rate["cnnjax fused", name] * flops_per_image[name] / peak})
    for framework in ("cnnjax", "cnnjax fused"):
      rows.append({"what": f"{name} forward rate, {framework} / torch", "value": rate[framework, name] / rate[
          "torch", name], "unit": "x"})
  at_peak = images_per_call * flops_per_image["resnet20"] / peak
  rows += [
      {"what": f"cnnjax occlusion ({images_per_call} images, {chunk} positions per call)",
       "value": seconds["cnnjax occlusion"], "unit": "s", "share of peak": at_peak / seconds["cnnjax occlusion"]},
      {"what": "captum occlusion", "value": seconds["captum occlusion"], "unit": "s",
       "share of peak": at_peak / seconds["captum occlusion"]},
      {"what": "captum occlusion / torch forward of the same images", "unit": "x",
       "value": seconds["captum occlusion"] * rate["torch", "resnet20"] / images_per_call},
      {"what": "speed-up, captum / cnnjax occlusion", "value": seconds["captum occlusion"] / seconds[
          "cnnjax occlusion"], "unit": "x"},
      {"what": "ceiling: captum / (cnnjax's arithmetic at the peak)", "value": seconds["captum occlusion"] / at_peak,
       "unit": "x"},
  ]
  columns = ["what", "value", "unit", "share of peak"]
  common.print_report(rows, columns)
  stem = Path(args.out) if args.out else HERE / "results" / f"{datetime.date.today().isoformat()}-forward-bound"
  environment = {**common.environment(), "onednn": onednn.version(), "occlusion chunk": chunk}
  stem.with_suffix(".json").write_text(json.dumps({"environment": environment, "rows": rows, "timed": timed},
                                                  indent=1, default=float))
  stem.with_suffix(".md").write_text(common.markdown(rows, columns) + "\n")


if __name__ == "__main__":
  main()
