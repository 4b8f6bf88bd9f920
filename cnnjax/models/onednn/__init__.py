"""oneDNN's 2-D convolutions as XLA:CPU custom calls (issue 18): the kernels PyTorch runs on CPU, for the
convolution shapes where XLA:CPU's own (Eigen) kernels are slower (bench/RESULTS.md, bench/onednn_conv.py).

`conv.cc` beside this file registers three typed XLA FFI handlers — forward, backward-data (input gradient) and
backward-weights (kernel gradient), NHWC / HWIO, float32 and (names + `_bf16`) bfloat16, strides, explicit
padding and kernel dilation as attributes — and `conv` here is a `jax.custom_vjp` whose forward and backward
call them. Two more handlers are the inference forward with a bias, an added residual and a ReLU as oneDNN
post-ops (`fused_conv`, which `cnnjax.models.fusion` calls for the explainers' forward-only passes).
`xla_cpu.conv` chooses `conv` where a program is lowered for CPU (`CNNJAX_KERNELS=onednn`, or `auto` for the
shapes in its measured table).

The library is optional. `build()` (or `python -m cnnjax.models.onednn build`) compiles conv.cc with the C++
compiler ($CXX, else g++) against the pinned oneDNN CPU build (`onednn-cpu-gomp` + `onednn-devel-cpu-gomp`) and
jaxlib's FFI headers into the cache folder ($CNNJAX_CACHE_DIR, else ~/.cache/cnnjax, then onednn/), under a name
keyed by everything that went into it; `available()` loads it if it is there and otherwise says once, in the
log, that XLA's kernels are used and how to build it. `pip install --no-build-isolation .` from an environment
that has jax and oneDNN compiles it into the package instead (setup.py; `packaged_library()`, taken first);
any other `pip install .` skips that step with a message and needs no compiler.

Which oneDNN: the CPU-only build on GNU OpenMP (PyPI's last is 2023.2, oneDNN 3.2), as PyTorch links it. PyPI's
newer `onednn` (2026.x) is a SYCL build whose CPU engine runs each primitive through Intel's OpenCL CPU runtime on
a TBB pool: the same convolutions took 1.14x longer inside a resnet20 training step (bench/RESULTS.md, "oneDNN
on OpenMP").

Threads: a custom call runs oneDNN on the XLA thread that issued it, as the master of an OpenMP team of
CNNJAX_ONEDNN_THREADS threads (default: the cores this process may run on, `threads()`), so a convolution is
computed by that team alone. XLA may still run an independent operation on its other threads meanwhile; set the
variable lower where that, or other processes, share the cores.
"""
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("conv.cc")
THREADS_VARIABLE = "CNNJAX_ONEDNN_THREADS"
# op -> its custom call: forward, input gradient (oneDNN's backward-data), kernel gradient (backward-weights)
TARGETS = {"forward": "cnnjax_onednn_conv_forward", "input_gradient": "cnnjax_onednn_conv_backward_data",
           "kernel_gradient": "cnnjax_onednn_conv_backward_weights"}
OPS = tuple(TARGETS)
# whether the fused inference forward adds a residual -> its custom call
FUSED_TARGETS = {False: "cnnjax_onednn_conv_fused", True: "cnnjax_onednn_conv_fused_add"}
_BFLOAT16_SUFFIX = "_bf16"  # the same three handlers for bfloat16 operands
BUILD_COMMAND = "python -m cnnjax.models.onednn build"
_ONEDNN_LIBRARY = "libdnnl.so.3"

Pairs = Tuple[Tuple[int, int], Tuple[int, int]]

_log = logging.getLogger(__name__)


class Unavailable(RuntimeError):
  """The oneDNN library cannot be built or loaded here (the message says why and what to do)."""


def install_prefix() -> Optional[Path]:
  """The installation prefix holding oneDNN's library and headers (pip's `onednn-cpu-gomp` +
  `onednn-devel-cpu-gomp` wheels put them in <prefix>/lib and <prefix>/include): this environment's, the user
  site's or the base interpreter's."""
  for prefix in (sys.prefix, site.getuserbase(), sys.base_prefix):
    if (Path(prefix) / "lib" / _ONEDNN_LIBRARY).exists():
      return Path(prefix)
  return None


def cache_dir() -> Path:
  """Where built libraries go: $CNNJAX_CACHE_DIR/onednn, else ~/.cache/cnnjax/onednn (as cnnjax.data's cache)."""
  root = os.environ.get("CNNJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cnnjax")
  return Path(root) / "onednn"


def _compile_command(prefix: Path, output: Path) -> list:
  """The one compiler command that builds conv.cc into `output`, linked to the oneDNN of `prefix` (and OpenMP,
  whose team size conv.cc sets) with that folder as the run-time search path (DT_RPATH)."""
  compiler = os.environ.get("CXX") or "g++"
  lib = prefix / "lib"
  return [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w", str(SOURCE),
          f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}", f"-L{lib}", f"-l:{_ONEDNN_LIBRARY}",
          f"-Wl,--disable-new-dtags,-rpath,{lib}", "-o", str(output)]


def library_path(prefix: Optional[Path] = None) -> Optional[Path]:
  """The built library for this source, compiler command and oneDNN installation (None without oneDNN): its
  name holds a hash of all three, so an edit of conv.cc or another environment builds anew."""
  prefix = prefix or install_prefix()
  if prefix is None:
    return None
  recipe = _compile_command(prefix, Path("OUT"))
  digest = hashlib.sha256(SOURCE.read_bytes() + "\0".join(recipe).encode() + jax.__version__.encode())
  return cache_dir() / f"libcnnjax_onednn-{digest.hexdigest()[:16]}.so"


def packaged_library() -> Path:
  """Where a library compiled at install sits, relative to this package (setup.py writes it into the wheel): a
  folder that is no Python package, so module walkers never take it for an extension module; the name is keyed
  by conv.cc and the jax it was compiled for, so an upgraded jax or an edited conv.cc is never served an old
  build."""
  digest = hashlib.sha256(SOURCE.read_bytes() + jax.__version__.encode())
  return Path("built") / f"libcnnjax_onednn-{digest.hexdigest()[:16]}.so"


def build(target: Optional[Path] = None) -> Path:
  """Compiles conv.cc into `target` (default: `library_path()`, in the cache folder) unless it is there, in a few
  seconds; returns its path.

  Raises:
    Unavailable: oneDNN's wheels, their headers or a C++ compiler are missing, or the compiler failed (its
      first error line is in the message).
  """
  prefix = install_prefix()
  if prefix is None or not (prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists():
    raise Unavailable(f"oneDNN is not installed; pip install 'cnnjax[onednn]' (onednn-cpu-gomp, "
                      f"onednn-devel-cpu-gomp), then {BUILD_COMMAND}")
  target = target or library_path(prefix)
  if target.exists():
    return target
  command = _compile_command(prefix, target)
  if shutil.which(command[0]) is None:
    raise Unavailable(f"no C++ compiler {command[0]!r} to build cnnjax's oneDNN kernels; install g++ or set CXX")
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
    partial = Path(scratch) / target.name
    command[-1] = str(partial)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      lines = result.stderr.strip().splitlines() or ["(no output)"]
      first_error = next((line for line in lines if "error" in line), lines[-1])
      raise Unavailable(f"building {SOURCE.name} failed: {first_error.strip()}")
    partial.replace(target)  # whole or not at all: a killed build leaves no library behind
  return target


def threads() -> int:
  """oneDNN's worker count: CNNJAX_ONEDNN_THREADS, else the cores this process may run on."""
  value = os.environ.get(THREADS_VARIABLE)
  if not value:
    return len(os.sched_getaffinity(0))
  if not value.isdigit() or int(value) < 1:
    raise ValueError(f"{THREADS_VARIABLE}={value!r} is invalid; give a positive number of threads")
  return int(value)


_library = None  # the loaded library (ctypes), once `_load` succeeded
_told = set()  # the reasons already logged


def _load() -> Optional[str]:
  """Loads the built library and registers its handlers, once; None if it is loaded, else why not (a later
  call tries again, so a library built meanwhile is taken)."""
  global _library
  if _library is not None:
    return None
  count = threads()  # a bad CNNJAX_ONEDNN_THREADS fails here, in one line
  packaged = SOURCE.parent / packaged_library()
  path = packaged if packaged.exists() else library_path()
  if path is None or not path.exists():
    missing = "oneDNN is not installed" if path is None else f"no {path}"
    return (f"cnnjax's oneDNN convolutions are not built ({missing}); XLA's kernels are used. Build them with "
            f"`{BUILD_COMMAND}`")
  try:
    library = ctypes.CDLL(str(path))
  except OSError as error:
    return f"cnnjax's oneDNN convolutions could not be loaded ({error}); XLA's kernels are used"
  library.cnnjax_onednn_set_num_threads(ctypes.c_int(count))
  for target in (*TARGETS.values(), *FUSED_TARGETS.values()):
    for name in (target, target + _BFLOAT16_SUFFIX):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
  _library = library
  _log.info("cnnjax: oneDNN %s convolutions loaded from %s, %d threads", version(), path, count)
  return None


def version() -> Optional[str]:
  """The loaded oneDNN's version ('3.13.2'), None before it is loaded."""
  if _library is None:
    return None
  number = _library.cnnjax_onednn_version()
  return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def native_bfloat16() -> bool:
  """Whether the loaded oneDNN computes bfloat16 natively on this CPU (AVX512-BF16 or later); elsewhere it would
  emulate it, slower than XLA. False before the library is loaded."""
  return _library is not None and bool(_library.cnnjax_onednn_has_bfloat16())


def available(explicitly_asked: bool = False) -> bool:
  """Whether the oneDNN kernels are loaded (loading them on the first call). If not, says why once: a warning
  in the log when `explicitly_asked` (CNNJAX_KERNELS=onednn), else an info line."""
  reason = _load()
  if reason is not None and not _told:
    _told.add(reason)
    (_log.warning if explicitly_asked else _log.info)(reason)
  return reason is None


# ---------------------------------------------------------------------------------------------------------------
# The convolution.


def supports(inputs, kernel, padding: Pairs, feature_group_count: int = 1) -> bool:
  """Whether `conv` computes this convolution: NHWC / HWIO, both float32 or both bfloat16, ungrouped, no
  negative padding, and no empty operand or output (lax handles those)."""
  return (inputs.ndim == 4 and kernel.ndim == 4 and inputs.dtype == kernel.dtype
          and inputs.dtype in (jnp.float32, jnp.bfloat16) and feature_group_count == 1
          and min(min(pair) for pair in padding) >= 0 and min(inputs.shape) > 0 and min(kernel.shape) > 0
          and inputs.shape[3] == kernel.shape[2]
          and min(output_spatial(inputs.shape[1:3], kernel.shape[:2], (1, 1), padding, (1, 1))) > 0)


def output_spatial(spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Pairs,
                   dilation: Sequence[int]) -> Tuple[int, int]:
  """(H', W') of a convolution, as lax.conv_general_dilated computes it (floor division)."""
  return tuple((spatial[axis] + sum(padding[axis]) - (window[axis] - 1) * dilation[axis] - 1) // strides[axis] + 1
               for axis in range(2))


def _ffi_call(target: str, out_shape, strides, padding, dilation, *operands, aliases=None, **attributes):
  """One FFI custom call of `target` (its _bf16 twin for bfloat16) returning `out_shape`; vmapped, it runs once per
  element (`sequential`, a loop)."""
  dtype = operands[0].dtype
  target += _BFLOAT16_SUFFIX if dtype == jnp.bfloat16 else ""
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out_shape, dtype), vmap_method="sequential",
                          input_output_aliases=aliases)(
      *operands, strides=np.asarray(strides, np.int64), padding=np.asarray(padding, np.int64).reshape(-1),
      dilation=np.asarray(dilation, np.int64), **attributes)


def _folding(call, out_shape, operands, activations: Tuple[int, ...]):
  """`call(out_shape, *operands)`, batched by folding: under vmap, when exactly the operands at positions
  `activations` are vmapped (N-first maps; the kernel and bias shared), it is one call on the vmapped axis merged
  into N (explainers vmap the backward pass over K targets' cotangents, perturbation chunks over their copies);
  other batchings (vmapped kernels) run per element."""
  batched = jax.custom_batching.custom_vmap(functools.partial(call, out_shape))

  @batched.def_vmap
  def _folded(axis_size, in_batched, *args):
    if tuple(in_batched) != tuple(index in activations for index in range(len(args))):
      in_axes = tuple(0 if is_batched else None for is_batched in in_batched)
      return jax.vmap(functools.partial(call, out_shape), in_axes=in_axes)(*args), True
    merged = [arg.reshape(axis_size * arg.shape[1], *arg.shape[2:]) if index in activations else arg
              for index, arg in enumerate(args)]
    outputs = _folding(call, (axis_size * out_shape[0], *out_shape[1:]), merged, activations)
    return outputs.reshape(axis_size, *out_shape), True

  return batched(*operands)


def _call(direction: str, out_shape, operands, strides, padding, dilation):
  """The `direction` convolution of (activations, kernel) or (inputs, cotangents), folded under vmap except for
  the kernel gradient (which sums over N)."""
  call = lambda out_shape, *operands: _ffi_call(TARGETS[direction], out_shape, strides, padding, dilation,
                                                  *operands)
  return _folding(call, out_shape, operands, () if direction == "kernel_gradient" else (0,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv(inputs, kernel, strides: Tuple[int, int], padding: Pairs, dilation: Tuple[int, int] = (1, 1),
         ops: Tuple[str, ...] = OPS, fallback=None):
  """`lax.conv_general_dilated(inputs, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=
  ('NHWC', 'HWIO', 'NHWC'))` by oneDNN; its gradients are oneDNN's backward-data and backward-weights
  convolutions (`supports` must hold; the library must be `available()`).

  Args:
    inputs: (N, H, W, C) float32 or bfloat16.
    kernel: (KH, KW, C, O), the same dtype.
    strides, dilation: per spatial axis (dilation of the kernel, lax's rhs_dilation).
    padding: explicit ((top, bottom), (left, right)), non-negative.
    ops: which of OPS oneDNN computes; the others are `fallback`'s (its value, or its vjp for a gradient).
    fallback: `(inputs, kernel) -> outputs`, the same convolution by other kernels; needed unless ops is OPS.
  Returns:
    (N, H', W', O), the inputs' dtype (bfloat16 sums accumulate in float32 inside oneDNN).
  """
  return _conv_forward(inputs, kernel, strides, padding, dilation, ops, fallback)[0]


def _conv_forward(inputs, kernel, strides, padding, dilation, ops, fallback):
  if "forward" not in ops:
    return fallback(inputs, kernel), (inputs, kernel)
  spatial = output_spatial(inputs.shape[1:3], kernel.shape[:2], strides, padding, dilation)
  outputs = _call("forward", (inputs.shape[0], *spatial, kernel.shape[3]), (inputs, kernel), strides, padding,
                  dilation)
  return outputs, (inputs, kernel)


def _conv_backward(strides, padding, dilation, ops, fallback, residuals, cotangents):
  inputs, kernel = residuals  # a fallback's vjp recomputes no forward: XLA drops the unused outputs
  if "input_gradient" in ops:
    input_gradient = _call("input_gradient", inputs.shape, (cotangents, kernel), strides, padding, dilation)
  else:
    input_gradient = jax.vjp(lambda inputs: fallback(inputs, kernel), inputs)[1](cotangents)[0]
  if "kernel_gradient" in ops:
    kernel_gradient = _call("kernel_gradient", kernel.shape, (inputs, cotangents), strides, padding, dilation)
  else:
    kernel_gradient = jax.vjp(lambda kernel: fallback(inputs, kernel), kernel)[1](cotangents)[0]
  return input_gradient, kernel_gradient


conv.defvjp(_conv_forward, _conv_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def fused_conv(inputs, kernel, bias, residual, strides: Tuple[int, int], padding: Pairs, relu: bool):
  """`relu?(conv(inputs, kernel) + bias [+ residual])` as one oneDNN inference convolution: the bias, the residual
  (oneDNN's sum post-op, into the output buffer XLA aliases to it) and the ReLU are applied to each output tile
  while it is in registers, so the elementwise passes XLA would run over the output after the custom call are gone.
  `cnnjax.models.fusion` folds BatchNorm into `kernel` and `bias` and calls this; differentiable (its gradient
  is oneDNN's backward convolutions), though it is meant for forward-only passes.

  Args:
    inputs: (N, H, W, C); kernel: (KH, KW, C, O); bias: (O,); residual: (N, H', W', O) or None; all one dtype.
    strides, padding: as `conv` (no dilation). relu: whether max(., 0) ends it.
  Returns:
    (N, H', W', O).
  """
  return _fused_forward(inputs, kernel, bias, residual, strides, padding, relu)[0]


def _fused_forward(inputs, kernel, bias, residual, strides, padding, relu):
  spatial = output_spatial(inputs.shape[1:3], kernel.shape[:2], strides, padding, (1, 1))
  out_shape = (inputs.shape[0], *spatial, kernel.shape[3])
  adds = residual is not None
  operands = (inputs, kernel, bias, residual) if adds else (inputs, kernel, bias)
  call = lambda out_shape, *operands: _ffi_call(FUSED_TARGETS[adds], out_shape, strides, padding, (1, 1),
                                                  *operands, aliases={3: 0} if adds else None, relu=bool(relu))
  outputs = _folding(call, out_shape, operands, (0, 3) if adds else (0,))
  return outputs, (inputs, kernel, outputs, () if adds else None)


def _fused_backward(strides, padding, relu, saved, cotangents):
  inputs, kernel, outputs, adds = saved
  if relu:  # relu(z) > 0 exactly where z > 0
    cotangents = jnp.where(outputs > 0, cotangents, jnp.zeros_like(cotangents))
  input_gradient = _call("input_gradient", inputs.shape, (cotangents, kernel), strides, padding, (1, 1))
  kernel_gradient = _call("kernel_gradient", kernel.shape, (inputs, cotangents), strides, padding, (1, 1))
  return (input_gradient, kernel_gradient, jnp.sum(cotangents, axis=(0, 1, 2)),
          None if adds is None else cotangents)


fused_conv.defvjp(_fused_forward, _fused_backward)
