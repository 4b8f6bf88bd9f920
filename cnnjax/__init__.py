"""cnnjax: train the classic convolutional networks in JAX/Flax and see why they predict what they predict.

Importing cnnjax sets one XLA:CPU flag in XLA_FLAGS (convolutions off YNNPACK, see below), so that every CPU
computation of the process gets it, your own `jax.jit` of a cnnjax model included; set CNNJAX_XLA_FLAGS=0 before
importing cnnjax to leave XLA_FLAGS as it is. The other XLA:CPU work-arounds are chosen per platform, when a
program is lowered (cnnjax.models.xla_cpu).
"""
import os
from importlib import metadata

__version__ = "0.1.0"

# XLA:CPU in jaxlib 0.10 hands convolutions to YNNPACK by default, whose kernel-gradient convolutions run 5-10x
# slower than XLA's own Eigen convolutions on these CNNs' shapes (bench/RESULTS.md): training steps were
# 1.3-2.2x slower. cnnjax takes convolutions off YNNPACK's list (XLA's default list is matmuls, convolutions and
# reductions) in XLA_FLAGS at import: a flag, unlike compiler options, reaches computations cnnjax does not compile
# itself, such as a user's `jax.jit(model.apply)`; it only affects XLA:CPU. The same setting as per-computation
# compiler options (`.lower(...).compile(XLA_CPU_COMPILER_OPTIONS)`), for code that runs with CNNJAX_XLA_FLAGS=0
# to leave XLA_FLAGS alone (bench/run.py, so that Keras keeps XLA's defaults):
XLA_CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
_XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_TESTED_JAXLIB = ("0.10.",)  # an XLA_FLAGS entry the installed XLA does not know aborts the process


def _set_xla_flags() -> None:
  """Adds `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` to XLA_FLAGS, unless the variable
  already sets that flag (yours wins), CNNJAX_XLA_FLAGS=0 (the opt-out), or jaxlib is not a tested release.

  XLA reads XLA_FLAGS when JAX creates its CPU client (the first computation), so this takes effect when cnnjax
  is imported before any JAX computation runs.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if os.environ.get("CNNJAX_XLA_FLAGS", "1") == "0" or _XLA_FLAG in flags:
    return
  try:
    jaxlib = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return
  if jaxlib.startswith(_TESTED_JAXLIB):
    os.environ["XLA_FLAGS"] = f"{flags} {_XLA_FLAG}=-individual_convolution".strip()


_set_xla_flags()
