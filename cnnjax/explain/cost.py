"""What an explanation costs before running it: XLA's cost and memory analysis of the compiled call, and its FLOPs in
units of one plain forward pass of the same batch (the figure captum and pytorch-grad-cam users compare by)."""
import functools
from typing import Callable, Dict, Optional

import jax

from cnnjax.explain import features
from cnnjax.explain import targets as targets_lib
from cnnjax.models import xla_cpu


def _flops(compiled) -> Optional[float]:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) and analysis else analysis
  flops = (analysis or {}).get("flops")
  return float(flops) if flops is not None and flops >= 0 else None


def _bytes(compiled) -> Optional[int]:
  """The compiled call's memory: its arguments, outputs and temporaries (what XLA reserves while it runs)."""
  try:
    memory = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return None
  if memory is None:
    return None
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
             - memory.alias_size_in_bytes)


def cost(explainer: Callable, model, variables, images, targets, **options) -> Dict[str, Optional[float]]:
  """XLA's figures for `explainer(model, variables, images, targets, **options)`, compiled but not run.

  Args:
    explainer: any cnnjax explainer (e.g. cnnjax.explain.gradcam); options: its keyword arguments.
  Returns:
    {"flops": FLOPs of the call (counted along the portable path: XLA sees no FLOPs inside oneDNN's calls),
    "bytes": the compiled call's arguments + outputs + temporaries, "forwards": flops over those of one plain
    inference forward pass of the same batch}; None where the backend gives no figure.
    Grad-CAM reads about 1 forward, saliency about 2-3 (a forward and a backward through the whole network).
    XLA counts a loop's body once: chunks that run in a loop (more than 32 on CPU, any on GPU/TPU) are undercounted;
    pass `chunk_size` covering every sample to read the full figure.
  """
  images = features.check_images(images)
  targets = targets_lib.check_targets(model, images, targets)
  call = jax.jit(lambda variables, images, targets: explainer(model, variables, images, targets, **options))
  memory = _bytes(call.lower(variables, images, targets).compile())
  # XLA counts no FLOPs inside a custom call (oneDNN's convolutions on CPU), so the FLOPs are those of the same
  # computation along the portable path, where XLA sees every convolution.
  with xla_cpu.kernels("portable"):
    flops = _flops(call.lower(variables, images, targets).compile())
    forward_flops = _flops(jax.jit(functools.partial(features.apply_logits, model)).lower(variables, images).compile())
  return {"flops": flops, "bytes": memory,
          "forwards": flops / forward_flops if flops is not None and forward_flops else None}
