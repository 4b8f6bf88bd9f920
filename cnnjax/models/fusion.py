"""Inference-time fusion of a convolution with what follows it (BatchNorm, a residual add, a ReLU) into one oneDNN
call, for the forward-only passes of the perturbation explainers.

In inference a ResNet block is convolution -> BatchNorm -> (add) -> ReLU. XLA:CPU computes the convolution in a
kernel (its own or oneDNN's custom call) and the rest as one elementwise pass that reads the convolution's output
back from memory and writes another; on resnet20 its convolutions alone take three quarters of the forward.
oneDNN applies a bias, a residual and a ReLU to each output tile while it is still in registers (post-ops), and
BatchNorm's moving statistics fold into the convolution's kernel and bias (w * g, (b - mean) * g + beta with
g = scale / sqrt(var + eps), Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", 3.2), so the whole chain is one `onednn.fused_conv`.

Within `inference_fusion()`, models are traced as they are (nothing in them changes) while an interceptor
(`nn.intercept_methods`, as `introspect`) follows each convolution's output through the layers that can join
it: `layers.Conv` (no groups; its own ReLU too), then `nn.BatchNorm` on moving statistics, `layers.Add` of two
maps, `layers.Activation('relu')`, in that order. Each layer still computes its own value; where the program
runs on CPU with oneDNN loaded, the fused call's value replaces it (`lax.platform_dependent`, so other platforms
keep the layer's own value and nothing changes there), and XLA drops the unfused work nobody reads. Values agree
with the unfused layers to float rounding (BatchNorm folded into the kernel rounds differently).

Not for differentiated passes: the fused call has a gradient, but the backprop modifiers of
`cnnjax.explain.backprop` replace ReLU gradients by intercepting `activate`, which a fused ReLU never calls.
"""
import contextlib
import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.models import layers, onednn, xla_cpu


@dataclasses.dataclass(frozen=True)
class _Chain:
  """A fused call's operands: relu?(conv(inputs, kernel) + bias [+ residual])."""
  inputs: jax.Array
  kernel: jax.Array
  bias: jax.Array
  strides: tuple
  padding: tuple  # explicit ((top, bottom), (left, right))
  residual: Optional[jax.Array] = None
  relu: bool = False

  @property
  def bare(self) -> bool:
    """Whether nothing follows the convolution's bias yet, so BatchNorm may fold in or a residual join."""
    return self.residual is None and not self.relu


class _Chains:
  """The outputs produced by fused calls in the trace now, by identity, with the chain that made them."""

  def __init__(self):
    self._by_id = {}

  def get(self, value) -> Optional[_Chain]:
    entry = self._by_id.get(id(value))
    return entry[1] if entry is not None and entry[0] is value else None

  def emit(self, chain: _Chain, unfused):
    """The chain's value: the fused call where the program runs on CPU, `unfused` (the layer's own) elsewhere."""
    def fused(inputs, kernel, bias, residual, unfused):
      return onednn.fused_conv(inputs, kernel, bias, residual, chain.strides, chain.padding, chain.relu)

    value = lax.platform_dependent(chain.inputs, chain.kernel, chain.bias, chain.residual, unfused, cpu=fused,
                                   default=lambda *operands: operands[-1])
    self._by_id[id(value)] = (value, chain)  # the value is kept alive, so its id is not reused in this trace
    return value


def _conv_chain(module: layers.Conv, inputs) -> Optional[_Chain]:
  """The chain a `layers.Conv` call starts, None where oneDNN cannot compute it fused."""
  if module.feature_group_count != 1 or module.activation not in (None, "linear", "relu"):
    return None
  dtype = module.dtype or inputs.dtype
  if dtype != jnp.float32 or inputs.dtype != jnp.float32:
    return None
  kernel = module.get_variable("params", "kernel").astype(dtype)
  padding = xla_cpu.explicit_padding(inputs.shape[1:3], kernel.shape[:2], module.strides, module.padding)
  if not xla_cpu.onednn_computes(inputs, kernel, padding):
    return None
  bias = (module.get_variable("params", "bias").astype(dtype) if module.use_bias
          else jnp.zeros((kernel.shape[-1],), dtype))
  return _Chain(inputs, kernel, bias, tuple(module.strides), padding, relu=module.activation == "relu")


def _with_batch_norm(chain: _Chain, module: nn.BatchNorm) -> _Chain:
  """The chain with BatchNorm's moving statistics folded into its kernel and bias."""
  mean = module.get_variable("batch_stats", "mean")
  gain = lax.rsqrt(module.get_variable("batch_stats", "var") + module.epsilon)
  if module.use_scale:
    gain = gain * module.get_variable("params", "scale")
  shift = module.get_variable("params", "bias") if module.use_bias else 0.0
  return dataclasses.replace(chain, kernel=(chain.kernel * gain).astype(chain.kernel.dtype),
                             bias=((chain.bias - mean) * gain + shift).astype(chain.bias.dtype))


def _interceptor(chains: _Chains):
  def fuse(next_fun, args, kwargs, context):
    unfused = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__" or not isinstance(unfused, jax.Array):
      return unfused
    chain = None
    if isinstance(module, layers.Conv) and len(args) == 1:
      chain = _conv_chain(module, args[0])
    elif (isinstance(module, nn.BatchNorm) and len(args) == 1
          and kwargs.get("use_running_average", module.use_running_average) and module.axis == -1):
      joined = chains.get(args[0])
      if joined is not None and joined.bare:
        chain = _with_batch_norm(joined, module)
    elif isinstance(module, layers.Add) and len(args) == 2:
      for this, other in ((args[1], args[0]), (args[0], args[1])):
        joined = chains.get(this)
        if (joined is not None and joined.bare and other is not this and other.shape == unfused.shape
            and other.dtype == unfused.dtype):
          chain = dataclasses.replace(joined, residual=other)
          break
    elif isinstance(module, layers.Activation) and module.kind == "relu" and len(args) == 1:
      joined = chains.get(args[0])
      if joined is not None and not joined.relu:
        chain = dataclasses.replace(joined, relu=True)
    return unfused if chain is None else chains.emit(chain, unfused)

  return fuse


@contextlib.contextmanager
def inference_fusion():
  """Within this context, models traced in inference mode run their convolution + BatchNorm + add + ReLU chains
  as single oneDNN calls where the program runs on CPU with oneDNN loaded (see the module docstring); elsewhere,
  or under the 'portable' and 'xla_cpu' kernel paths, as before. For forward-only passes: trace inside it."""
  with xla_cpu.fusing(), nn.intercept_methods(_interceptor(_Chains())):
    yield
