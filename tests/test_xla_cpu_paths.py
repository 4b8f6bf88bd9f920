"""The XLA:CPU work-arounds of issue 5 (cnnjax.models.xla_cpu, bench/RESULTS.md), as programs lowered for CPU
get them: convolutions on maps smaller than their kernel window run as im2col matmuls, strided convolutions take
their input gradient by col2im, max pooling is differentiated over strided views instead of an argmax
reduce-window and a scatter, residual-block outputs are materialized once, and importing cnnjax takes
convolutions off XLA's YNNPACK list. tests/test_kernels.py checks the other platforms' programs."""
import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from cnnjax import models
from cnnjax.models import layers, xla_cpu
from cnnjax.train import step as step_lib

CASES = [  # (H, W), kernel, strides, padding
    ((2, 2), (3, 3), (1, 1), "SAME"),
    ((1, 1), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((2, 3), (3, 3), (2, 2), "SAME"),
    ((2, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 2), (3, 3), (1, 1), "VALID"),
]


@pytest.mark.parametrize("spatial,kernel_size,strides,padding", CASES)
def test_conv_as_matmul_equals_lax_conv_and_its_gradients(spatial, kernel_size, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, *spatial, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((*kernel_size, 5, 4)), jnp.float32)

  def reference(x, w):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def as_matmul(x, w):
    return xla_cpu.conv_as_matmul(x, w, strides, padding)

  expected, got = reference(x, w), as_matmul(x, w)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
  for want, have in zip(jax.grad(loss(reference), (0, 1))(x, w), jax.grad(loss(as_matmul), (0, 1))(x, w)):
    np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5)


def test_only_convolutions_xla_would_swap_take_the_matmul_path():
  assert xla_cpu.xla_swaps_conv_operands((2, 2), (3, 3))
  assert xla_cpu.xla_swaps_conv_operands((1, 1), (3, 3))
  assert not xla_cpu.xla_swaps_conv_operands((3, 3), (3, 3))
  assert not xla_cpu.xla_swaps_conv_operands((1, 1), (1, 1))
  # VGG16 at 32px: block5 sees 2x2 maps; its compiled forward holds matmuls there, not convolutions.
  model = models.create("vgg16", num_classes=10, batch_norm=True, head="gap")
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  hlo = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, jnp.zeros((2, 32, 32, 3))).as_text()
  assert hlo.count("stablehlo.convolution") == 10  # blocks 1-4; the 3 convs of block5 are matmuls


STRIDED = [  # input shape, kernel, strides, padding
    ((2, 9, 11, 3), (3, 3), (2, 2), "SAME"),  # odd sizes: TF's extra pad at the bottom / right
    ((2, 9, 11, 3), (3, 2), (2, 3), "VALID"),  # windows that skip pixels (stride 3 > kernel 2)
    ((1, 8, 8, 4), (1, 1), (2, 2), "VALID"),  # ResNet's strided 1x1 projections
    ((2, 15, 15, 3), (7, 7), (2, 2), ((3, 3), (3, 3))),  # ResNet50's stem
    ((2, 10, 10, 5), (3, 3), (2, 1), ((0, 2), (1, 0))),  # asymmetric strides and pads
]


@pytest.mark.parametrize("shape,kernel_size,strides,padding", STRIDED)
def test_strided_conv_equals_lax_conv_and_its_gradients(shape, kernel_size, strides, padding):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((*kernel_size, shape[-1], 6)), jnp.float32)

  def reference(x, w):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def col2im(x, w):
    return xla_cpu.strided_conv(x, w, strides, layers._hashable_padding(padding))

  np.testing.assert_array_equal(col2im(x, w), reference(x, w))  # the forward is lax's own
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
  for want, have in zip(jax.grad(loss(reference), (0, 1))(x, w), jax.grad(loss(col2im), (0, 1))(x, w)):
    np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5)


def test_strided_conv_input_gradient_by_hand():
  """A 1-channel 2x2 kernel with stride 2 on a 4x4 image: windows do not overlap, so d out / d image is the
  kernel tiled over each window, times that window's output gradient; with stride 1 they would overlap."""
  kernel = jnp.asarray([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)
  cotangent = jnp.asarray([[1.0, -1.0], [10.0, 0.0]]).reshape(1, 2, 2, 1)
  image = jnp.zeros((1, 4, 4, 1))
  gradient = jax.vjp(lambda x: xla_cpu.strided_conv(x, kernel, (2, 2), "VALID"), image)[1](cotangent)[0]
  np.testing.assert_array_equal(gradient[0, :, :, 0], [[1, 2, -1, -2], [3, 4, -3, -4], [10, 20, 0, 0],
                                                       [30, 40, 0, 0]])


def test_strided_layers_input_gradient_has_no_dilated_convolution():
  """JAX's input gradient of a strided convolution is a convolution over the stride-dilated output gradient
  (`lhs_dilate`), which XLA:CPU computes over all the inserted zeros; Conv routes around it, except above the tap
  count where col2im costs more (AlexNet's 11x11/4 stem) and for grouped convolutions."""
  def dilated_convolutions(conv, shape):
    variables = conv.init(jax.random.PRNGKey(0), jnp.zeros(shape))
    gradient = jax.grad(lambda x, variables: jnp.sin(conv.apply(variables, x)).sum())
    program = jax.jit(gradient).lower(jnp.zeros(shape), variables).as_text()
    return program.count("stablehlo.convolution") - program.count("lhs_dilate = [1, 1]")

  assert dilated_convolutions(layers.Conv(8, (7, 7), (2, 2), ((3, 3), (3, 3))), (2, 32, 32, 3)) == 0
  assert dilated_convolutions(layers.Conv(8, (1, 1), (2, 2), "VALID"), (2, 16, 16, 4)) == 0
  assert dilated_convolutions(layers.Conv(8, (11, 11), (4, 4), "VALID"), (2, 35, 35, 3)) == 1
  assert dilated_convolutions(layers.Conv(8, (3, 3), (2, 2), feature_group_count=4), (2, 16, 16, 4)) == 1


POOLS = [  # input shape, window, strides, padding
    ((2, 30, 30, 5), (2, 2), (2, 2), "VALID"),
    ((2, 13, 13, 3), (2, 2), (2, 2), "VALID"),  # an odd size: the last row and column are dropped
    ((2, 15, 17, 3), (3, 3), (2, 2), "SAME"),  # ResNet50's pool1: overlapping windows
    ((1, 9, 9, 2), (3, 3), (1, 1), "SAME"),
    ((1, 8, 8, 2), (3, 3), (2, 2), ((1, 1), (0, 2))),
]


@pytest.mark.parametrize("shape,window,strides,padding", POOLS)
def test_max_pool_equals_flax_max_pool_and_its_gradient(shape, window, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)  # no ties: the maximum of each window is unique
  expected = nn.max_pool(x, window, strides, padding)
  got = xla_cpu.max_pool(x, window, strides, padding)
  assert got.shape == expected.shape and bool((got == expected).all())
  cotangent = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
  want = jax.vjp(lambda x: nn.max_pool(x, window, strides, padding), x)[1](cotangent)[0]
  have = jax.vjp(lambda x: xla_cpu.max_pool(x, window, strides, padding), x)[1](cotangent)[0]
  np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_goes_to_the_first_maximum_and_sums_over_overlapping_windows():
  # A 3x4 map, 2x2 windows at stride (1, 2): windows [rows 0-1, cols 0-1], [0-1, 2-3], [1-2, 0-1], [1-2, 2-3].
  x = jnp.asarray([[5., 5., 1., 2.],
                   [5., 0., 3., 3.],
                   [4., 0., 3., 3.]])[None, :, :, None]
  gradient = jax.grad(lambda x: jnp.sum(xla_cpu.max_pool(x, (2, 2), (1, 2), "VALID") * jnp.asarray(
      [[1., 10.], [100., 1000.]])[None, :, :, None]))(x)[0, :, :, 0]
  # Window 1 ties at 5 (0,0),(0,1),(1,0): row-major first is (0,0). Window 3's max 5 at (1,0) (shared pixel).
  # Windows 2 and 4 tie at 3: (1,2) is first in both, so it collects 10 + 1000.
  np.testing.assert_array_equal(gradient, [[1., 0., 0., 0.], [100., 0., 1010., 0.], [0., 0., 0., 0.]])
  with_nan = x.at[0, 1, 1, 0].set(jnp.nan)  # a NaN anywhere in a window propagates, as lax's max does
  np.testing.assert_array_equal(jnp.isnan(xla_cpu.max_pool(with_nan, (2, 2), (1, 2), "VALID"))[0, :, :, 0],
                                [[True, False], [True, False]])


def test_max_pool_gradient_does_not_depend_on_how_the_input_is_sharded():
  """The backward routes by the forward's argmax: a data-parallel step (batch split over devices, BatchNorm
  statistics reduced across them, so activations round differently) gets the single-device gradient. Comparing
  recomputed values with the pooled ones lost gradients here once."""
  model = models.create("simple_cnn_bn", num_classes=10, dropout=0.0)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  images = jnp.asarray(np.random.default_rng(1).random((8, 16, 16, 3)), jnp.float32)

  def loss(params, images):
    logits, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
    return jnp.sum(logits[:, 0])
  single = jax.jit(jax.grad(loss))(variables["params"], images)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  sharded = jax.jit(jax.grad(loss))(variables["params"], jax.device_put(images, split))
  jax.tree_util.tree_map(lambda want, have: np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5),
                         single, sharded)


def test_max_pool_layer_compiles_without_scatter_or_reduce_window():
  pool = layers.Pool("max", (2, 2))
  x = jnp.ones((4, 8, 8, 3))
  hlo = jax.jit(jax.grad(lambda x: pool.apply({}, x).sum())).lower(x).compile().as_text()
  assert " scatter(" not in hlo and " reduce-window(" not in hlo
  assert pool.apply({}, jnp.ones((1, 1, 1, 3))).shape == (1, 0, 0, 3)  # window larger than the map
  overlapping = layers.Pool("max", (3, 3), (2, 2), "SAME")  # ResNet50's stem pool
  hlo = jax.jit(jax.grad(lambda x: overlapping.apply({}, x).sum())).lower(x).compile().as_text()
  assert " scatter(" not in hlo and " reduce-window(" not in hlo


def test_materialized_is_the_identity_for_values_and_gradients():
  # (no subnormals: XLA:CPU flushes them to zero in every elementwise op, jnp.maximum included)
  values = jnp.asarray([[0.5, -0.0, 3e38], [jnp.inf, -jnp.inf, 1e-30]], jnp.float32)
  for probe in (1.5, jnp.inf, -jnp.inf, jnp.nan):  # the pixel the runtime one is built from
    x = values.at[0, 0].set(probe)
    np.testing.assert_array_equal(xla_cpu.materialized(x), x)
    np.testing.assert_array_equal(jax.jit(xla_cpu.materialized)(x), x)
  half = jnp.asarray([1.5, -2.25], jnp.bfloat16)
  assert xla_cpu.materialized(half).dtype == jnp.bfloat16
  np.testing.assert_array_equal(xla_cpu.materialized(half), half)
  cotangent = jnp.asarray([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]])
  np.testing.assert_array_equal(jax.vjp(xla_cpu.materialized, values.at[0, 0].set(1.0))[1](cotangent)[0], cotangent)


def _most_relus_in_one_fused_computation(hlo: str) -> int:
  return max(computation.count(" maximum(") for computation in hlo.split("\n%"))


def test_residual_chains_are_not_recomputed_inside_fusions():
  """resnet20's compiled training step: with block outputs materialized, no fused computation recomputes the
  ReLUs of several blocks (XLA duplicated up to four, recomputing whole stages inside layout copies)."""
  model = models.create("resnet20", num_classes=10)
  state = step_lib.create_train_state(model, optax.sgd(0.1, momentum=0.9), (32, 32, 3), seed=0)
  step = jax.jit(functools.partial(step_lib.train_step, model=model, num_classes=10,
                                   preprocess={"mode": "rescale"}))
  batch = {"images": jnp.zeros((8, 32, 32, 3), jnp.uint8), "labels": jnp.zeros((8,), jnp.int32)}
  assert _most_relus_in_one_fused_computation(step.lower(state, batch).compile().as_text()) <= 2


def _xla_flags_after_import(environment):
  code = "import os, cnnjax; print(os.environ.get('XLA_FLAGS', ''))"
  return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                        check=True).stdout.strip()


def test_import_takes_convolutions_off_ynnpack_unless_told_otherwise():
  base = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "CNNJAX_XLA_FLAGS")}
  jaxlib = __import__("importlib").metadata.version("jaxlib")
  flags = _xla_flags_after_import({**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  if jaxlib.startswith("0.10."):
    assert flags == ("--xla_force_host_platform_device_count=2 "
                     "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
  else:
    assert flags == "--xla_force_host_platform_device_count=2"
  mine = "--xla_cpu_experimental_ynn_fusion_type="
  assert _xla_flags_after_import({**base, "XLA_FLAGS": mine}) == mine
  assert _xla_flags_after_import({**base, "CNNJAX_XLA_FLAGS": "0"}) == ""


def test_flag_and_compiler_options_take_convolutions_only_off_ynnpack():
  """What `import cnnjax` sets (XLA_FLAGS) and cnnjax.XLA_CPU_COMPILER_OPTIONS compile alike: convolutions leave
  YNNPACK, reductions and matmuls stay."""
  code = """if True:
    import cnnjax, jax, jax.numpy as jnp
    x, w = jnp.ones((8, 16, 16, 64)), jnp.ones((3, 3, 64, 64))
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    functions = {"conv": conv, "reduce": lambda x, w: x.mean((0, 1, 2)), "dot": lambda x, w: x @ w[0, 0]}
    for options in (None, cnnjax.XLA_CPU_COMPILER_OPTIONS):  # the flag alone; the options overriding it
      print(sorted(name for name, f in functions.items()
                   if "ynn_fusion" in jax.jit(f).lower(x, w).compile(options).as_text()))"""
  base = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "CNNJAX_XLA_FLAGS")}
  if not __import__("importlib").metadata.version("jaxlib").startswith("0.10."):
    pytest.skip("the flag is set for the tested jaxlib only")
  lines = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True,
                         check=True).stdout.split("\n")
  assert lines[:2] == ["['dot', 'reduce']", "['dot', 'reduce']"]
