"""XLA:CPU's kernels chosen per platform (cnnjax.models.xla_cpu): the work-arounds and the portable operations
compute the same values and gradients for every architecture, programs lowered for GPU or TPU hold none of the
work-arounds while CPU's keep them, and `kernels` / CNNJAX_KERNELS force a path.

Each forced path is traced by a fresh function: `jax.jit` caches a trace by function and argument types, not by
the path."""
import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.models import xla_cpu

SIZES = (16, 32, 64, 96)  # tried in turn: the smallest input each architecture accepts keeps its case fast
BLOCKS = {"resnet20": 9}  # residual blocks, each of which XLA:CPU's program materializes
CONVOLUTIONS = {"vgg16": 13}
MAX_POOLS = {"simple_cnn": 2}


def _smallest_images(model) -> jax.ShapeDtypeStruct:
  for size in SIZES:
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    try:
      jax.eval_shape(lambda images: model.init(jax.random.key(0), images), images)
      return images
    except ValueError:  # too small for the architecture: a one-line error, see layers.check_input_size
      continue
  raise AssertionError(f"no input size in {SIZES} fits")


def _random_like(tree, seed: int):
  """Random arrays shaped as `tree`, made in numpy (a jitted `init` would compile for seconds): kernels scaled by
  their fan-in, BatchNorm variances positive."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if "var" in jax.tree_util.keystr(path[-1:]):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, tree)


def _assert_close(have, want, tolerance=1e-4):
  """Leaf by leaf, to `tolerance` relative to each value and to the largest magnitude of its leaf."""
  def close(path, have, want):
    scale = float(np.max(np.abs(want))) if np.size(want) else 0.0
    np.testing.assert_allclose(have, want, rtol=tolerance, atol=tolerance * scale + 1e-30,
                               err_msg=jax.tree_util.keystr(path))
  jax.tree_util.tree_map_with_path(close, have, want)


def _outputs_and_gradients(model, variables, images, cotangent, path: str):
  """Logits and the gradients of <logits, cotangent> w.r.t. params and images, traced along `path`."""
  def run(params, images):
    logits, pullback = jax.vjp(lambda params, images: model.apply({**variables, "params": params}, images),
                               params, images)
    return logits, pullback(cotangent)

  with xla_cpu.kernels(path):
    return jax.jit(run)(variables["params"], images)


@pytest.mark.parametrize("name", models.names())
def test_both_paths_compute_the_same_outputs_and_gradients(name):
  model = models.create(name, num_classes=3)
  shape = _smallest_images(model)
  variables = _random_like(jax.eval_shape(lambda images: model.init(jax.random.key(0), images), shape), seed=0)
  images = jnp.asarray(np.random.default_rng(1).standard_normal(shape.shape), jnp.float32)
  cotangent = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3)), jnp.float32)
  want = _outputs_and_gradients(model, variables, images, cotangent, "portable")
  _assert_close(_outputs_and_gradients(model, variables, images, cotangent, "xla_cpu"), want)


def test_a_training_step_with_batch_statistics_is_the_same_along_every_path():
  """resnet20 with train=True (BatchNorm on batch statistics, which it updates); 'auto' differentiates through
  `lax.platform_dependent` into the custom VJPs of the work-arounds."""
  model = models.create("resnet20", num_classes=3)
  shape = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = _random_like(jax.eval_shape(lambda images: model.init(jax.random.key(0), images), shape), seed=0)
  images = jnp.asarray(np.random.default_rng(1).standard_normal(shape.shape), jnp.float32)

  def step(params, images):
    def loss(params, images):
      logits, updates = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
      return jnp.sum(jnp.sin(logits)), (logits, updates)
    return jax.grad(loss, (0, 1), has_aux=True)(params, images)

  def traced(path):
    with xla_cpu.kernels(path):
      return jax.jit(lambda params, images: step(params, images))(variables["params"], images)

  want = traced("portable")
  for path in ("xla_cpu", "auto"):
    _assert_close(traced(path), want)


# ---------------------------------------------------------------------------------------------------------------
# Programs lowered per platform.


def _functions(name):
  """(variables, images, {'forward': ..., 'gradient': ...}) for `name` at 32px, all abstract."""
  model = models.create(name, num_classes=10)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda images: model.init(jax.random.key(0), images), images)

  def gradient(variables, images):
    loss = lambda params, images: jnp.sum(model.apply({**variables, "params": params}, images))
    return jax.grad(loss, (0, 1))(variables["params"], images)
  return variables, images, {"forward": lambda variables, images: model.apply(variables, images),
                             "gradient": gradient}


def _exported(function, args, platforms, path="auto") -> str:
  with xla_cpu.kernels(path):
    return jax.export.export(jax.jit(lambda *args: function(*args)), platforms=platforms)(*args).mlir_module()


# The platform switch's own ops: `case`s on a constant index with one branch left, which XLA inlines, and zeros
# standing for the residuals of the branch that lowering dropped, which XLA removes.
_SWITCH_OPS = ("case", "return", "constant", "broadcast_in_dim")


def _ops(program: str) -> collections.Counter:
  ops = collections.Counter(re.findall(r"stablehlo\.([a-z_]+)", program))
  return collections.Counter({op: count for op, count in ops.items() if op not in _SWITCH_OPS})


def _dilated_convolutions(program: str) -> int:
  """Convolutions over a stride-dilated operand: JAX's input gradient of a strided convolution."""
  return len(re.findall(r"lhs_dilate = \[(?!1, 1\])", program))


@pytest.mark.parametrize("name", ["resnet20", "simple_cnn", "vgg16"])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_programs_for_other_platforms_hold_none_of_the_work_arounds(name, platform):
  variables, images, functions = _functions(name)
  for kind, function in functions.items():
    program = _exported(function, (variables, images), (platform,))
    assert _ops(program) == _ops(_exported(function, (variables, images), (platform,), "portable")), kind
    assert "is_finite" not in program  # materialized's runtime one
    if name in CONVOLUTIONS:  # every layer a convolution, VGG16's 2x2 block5 ones too
      assert program.count("stablehlo.convolution") == CONVOLUTIONS[name] * (3 if kind == "gradient" else 1)
    if name in MAX_POOLS:
      assert program.count("stablehlo.reduce_window") == MAX_POOLS[name]
  if name == "resnet20":  # JAX's rule for the input gradients of its two strided 3x3 convolutions
    assert _dilated_convolutions(_exported(functions["gradient"], (variables, images), (platform,))) == 2


@pytest.mark.parametrize("name", ["resnet20", "simple_cnn", "vgg16"])
def test_programs_for_cpu_keep_the_work_arounds(name):
  variables, images, functions = _functions(name)
  for kind, function in functions.items():
    program = _exported(function, (variables, images), ("cpu",))
    assert _ops(program) == _ops(_exported(function, (variables, images), ("cpu",), "xla_cpu")), kind
    assert program.count("stablehlo.is_finite") == BLOCKS.get(name, 0)
    assert "reduce_window" not in program and "select_and_scatter" not in program
    assert _dilated_convolutions(program) == 0
    if name in CONVOLUTIONS:  # block5's three convolutions are matmuls
      assert program.count("stablehlo.convolution") == (CONVOLUTIONS[name] - 3) * (3 if kind == "gradient" else 1)


def test_cpu_compiles_the_switch_away():
  """XLA inlines the one-branch `case`s and drops the zero residuals: the compiled program is the one the
  work-arounds alone give."""
  variables, images, functions = _functions("resnet20")

  def compiled_ops(path):
    with xla_cpu.kernels(path):
      program = jax.jit(lambda *args: functions["gradient"](*args)).lower(variables, images).compile().as_text()
    return collections.Counter(re.findall(r"= [^=]*? ([a-z][a-z-]*)\(", program))

  auto = compiled_ops("auto")
  assert auto["conditional"] == 0 and auto == compiled_ops("xla_cpu")


def test_a_program_for_cpu_and_cuda_runs_on_cpu():
  model = models.create("resnet20", num_classes=10)
  images = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = _random_like(jax.eval_shape(lambda images: model.init(jax.random.key(0), images), images), seed=0)
  _, _, functions = _functions("resnet20")
  for function in functions.values():
    exported = jax.export.export(jax.jit(function), platforms=("cpu", "cuda"))(variables, images)
    assert exported.platforms == ("cpu", "cuda")
    _assert_close(exported.call(variables, images), jax.jit(function)(variables, images))


# ---------------------------------------------------------------------------------------------------------------
# Forcing a path.


def test_kernels_forces_a_path_for_functions_traced_inside_it():
  variables, images, functions = _functions("simple_cnn")
  gradient = functions["gradient"]
  jitted = jax.jit(lambda *args: gradient(*args))  # one function: jit's caches are keyed by the choice too
  lowered = lambda: jitted.lower(variables, images).as_text()
  with xla_cpu.kernels("portable"):
    portable = lowered()
    with xla_cpu.kernels(disable=("materialized",)):  # keeps the enclosing path
      assert _ops(lowered()) == _ops(portable)
  assert "select_and_scatter" in portable and "stablehlo.case" not in portable
  auto = lowered()  # the context is left: 'auto' again
  assert "select_and_scatter" not in auto and "stablehlo.case" in auto
  with xla_cpu.kernels("xla_cpu"):
    assert "stablehlo.case" not in lowered()


def test_single_work_arounds_turn_off():
  variables, images, functions = _functions("vgg16")
  forward = functions["forward"]
  with xla_cpu.kernels(disable=("max_pool",)):
    program = _exported(forward, (variables, images), ("cpu",))
    assert program.count("stablehlo.reduce_window") == 5  # flax's pools
    assert program.count("stablehlo.convolution") == 10  # conv_as_matmul still on
    with xla_cpu.kernels(disable=("conv_as_matmul",)):  # adds to the enclosing context's
      program = _exported(forward, (variables, images), ("cpu",))
      assert program.count("stablehlo.reduce_window") == 5 and program.count("stablehlo.convolution") == 13


def test_environment_variable_forces_a_path(monkeypatch):
  variables, images, functions = _functions("simple_cnn")
  monkeypatch.setenv("CNNJAX_KERNELS", "portable")
  assert _ops(_exported(functions["gradient"], (variables, images), ("cpu",), None)) == _ops(
      _exported(functions["gradient"], (variables, images), ("cpu",), "portable"))
  with xla_cpu.kernels("xla_cpu"):  # the context wins
    assert "reduce_window" not in _exported(functions["forward"], (variables, images), ("cpu",), None)


def _one_line_error(call) -> str:
  with pytest.raises(ValueError) as error:
    call()
  message = str(error.value).split("\n--------------------\n")[0]  # what follows is JAX's note on its traceback
  assert "\n" not in message
  return message


def test_bad_choices_raise_one_line_naming_the_valid_ones(monkeypatch):
  def enter(*args, **kwargs):
    with xla_cpu.kernels(*args, **kwargs):
      pass
  assert "auto, xla_cpu, portable" in _one_line_error(lambda: enter("gpu"))
  assert "conv_as_matmul, strided_conv, max_pool, materialized" in _one_line_error(
      lambda: enter(disable=("maxpool",)))
  variables, images, functions = _functions("simple_cnn")
  monkeypatch.setenv("CNNJAX_KERNELS", "fast")
  message = _one_line_error(lambda: jax.jit(functions["forward"]).lower(variables, images))
  assert "CNNJAX_KERNELS='fast'" in message and "auto, xla_cpu, portable" in message
