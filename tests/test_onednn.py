"""oneDNN's convolutions behind XLA's FFI (cnnjax.models.onednn): the three kernels give lax's values and
gradients on several geometries, programs lowered for CPU on the 'onednn' path hold the custom calls and no XLA
convolution, a small ResNet trains the same on both paths, results repeat bit for bit, and without the library
cnnjax says so once and computes with XLA's kernels.

The library is built here, in a folder of its own (cnnjax.models.onednn.build: one g++ run, about 10 s on 2
cores), so CI exercises it; requirements-dev.txt installs oneDNN. Only this module's tests trace with it
(conftest.py)."""
import functools
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from cnnjax import models
from cnnjax.models import onednn, xla_cpu
import test_kernels  # its per-architecture cases
from conftest import one_line_error

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(scope="module", autouse=True)
def library(tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:  # a folder of its own: see conftest's xla_kernels_outside_...
    patch.setenv("CNNJAX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    path = onednn.build()
    assert onednn.available(explicitly_asked=True), path
  return path


def _lax_conv(inputs, kernel, strides, padding, dilation=(1, 1)):
  return lax.conv_general_dilated(inputs, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC)


def _value_and_gradients(conv, inputs, kernel, cotangent):
  outputs, pullback = jax.vjp(conv, inputs, kernel)
  return (outputs, *pullback(cotangent))


def _assert_close(have, want, tolerance=2e-5):
  for name, have_leaf, want_leaf in zip(("outputs", "input gradient", "kernel gradient"), have, want):
    scale = float(np.max(np.abs(want_leaf)))
    np.testing.assert_allclose(have_leaf, want_leaf, rtol=tolerance, atol=tolerance * scale, err_msg=name)


# (N, H, W, C_in, C_out, kh, kw, strides, padding, dilation): odd sizes, stride 2 and 3 with floor-divided
# outputs, asymmetric pads and strides, a 1x1 projection, a dilated kernel, a 7x7/2 stem, one input channel.
GEOMETRIES = [
    (2, 9, 9, 3, 5, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (3, 10, 11, 4, 6, (3, 3), (2, 2), ((0, 1), (2, 0)), (1, 1)),
    (2, 11, 11, 5, 4, (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2)),
    (2, 8, 8, 16, 32, (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    (1, 17, 17, 3, 8, (7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    (2, 12, 9, 1, 3, (3, 2), (3, 1), ((1, 0), (0, 1)), (1, 1)),
    (4, 6, 6, 32, 16, (3, 3), (1, 2), ((1, 1), (1, 1)), (1, 1)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda geometry: "x".join(map(str, geometry[:5])))
def test_the_kernels_give_lax_values_and_gradients(geometry):
  n, h, w, c_in, c_out, window, strides, padding, dilation = geometry
  rng = np.random.default_rng(sum(geometry[:5]))
  inputs = jnp.asarray(rng.standard_normal((n, h, w, c_in)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((*window, c_in, c_out)), jnp.float32)
  out_shape = (n, *onednn.output_spatial((h, w), window, strides, padding, dilation), c_out)
  cotangent = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
  assert onednn.supports(inputs, kernel, padding)
  want = jax.jit(lambda *args: _value_and_gradients(
      lambda x, k: _lax_conv(x, k, strides, padding, dilation), *args))(inputs, kernel, cotangent)
  have = jax.jit(lambda *args: _value_and_gradients(
      lambda x, k: onednn.conv(x, k, strides, padding, dilation), *args))(inputs, kernel, cotangent)
  assert have[0].shape == want[0].shape == out_shape
  _assert_close(have, want)


@pytest.mark.parametrize("geometry", GEOMETRIES[:4], ids=lambda geometry: "x".join(map(str, geometry[:5])))
def test_the_bfloat16_kernels_give_lax_values_and_gradients_to_bfloat16_rounding(geometry):
  """The _bf16 handlers against lax in float32 on the same bfloat16 operands: oneDNN accumulates in float32 and
  rounds the result once, so each output is within a few bfloat16 steps (2^-8 relative) of the exact one."""
  n, h, w, c_in, c_out, window, strides, padding, dilation = geometry
  rng = np.random.default_rng(sum(geometry[:5]))
  out_shape = (n, *onednn.output_spatial((h, w), window, strides, padding, dilation), c_out)
  operands = [jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
              for shape in ((n, h, w, c_in), (*window, c_in, c_out), out_shape)]
  assert onednn.supports(*operands[:2], padding)
  have = jax.jit(lambda *args: _value_and_gradients(
      lambda x, k: onednn.conv(x, k, strides, padding, dilation), *args))(*operands)
  assert [leaf.dtype for leaf in have] == [jnp.bfloat16] * 3 and have[0].shape == out_shape
  want = _value_and_gradients(lambda x, k: _lax_conv(x, k, strides, padding, dilation),
                              *[operand.astype(jnp.float32) for operand in operands])
  _assert_close([leaf.astype(jnp.float32) for leaf in have], want, tolerance=2 ** -6)


def test_auto_runs_bfloat16_convolutions_on_onednn_where_the_cpu_computes_bfloat16(monkeypatch):
  images, kernel = jnp.zeros((2, 12, 12, 3), jnp.bfloat16), jnp.zeros((3, 3, 3, 8), jnp.bfloat16)

  def lowered():
    def forward(images, kernel):  # fresh per call: jit caches a trace by function, not by what it reads
      return xla_cpu.conv(images, kernel, (1, 1), "SAME")
    with xla_cpu.kernels("auto"):
      return jax.jit(forward).lower(images, kernel).as_text()
  monkeypatch.setattr(xla_cpu, "ONEDNN_WINS", {})  # bfloat16 does not read the float32 table
  monkeypatch.setattr(onednn, "native_bfloat16", lambda: True)
  assert "cnnjax_onednn_conv_forward_bf16" in lowered()
  monkeypatch.setattr(onednn, "native_bfloat16", lambda: False)  # oneDNN would emulate it: XLA keeps it
  assert "cnnjax_onednn" not in lowered()


def test_the_onednn_path_lowers_cpu_convolutions_to_the_custom_calls_and_auto_keeps_xla(monkeypatch):
  model = models.create("simple_cnn", num_classes=3)
  images = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda images: model.init(jax.random.key(0), images), images)

  def lowered(path, disable=()):
    def gradient(variables, images):  # a fresh function per path: jit caches a trace by function, not by path
      loss = lambda params: jnp.sum(model.apply({**variables, "params": params}, images))
      return jax.grad(loss)(variables["params"])
    with xla_cpu.kernels(path, disable=disable):
      return jax.jit(gradient).lower(variables, images).as_text()
  text = lowered("onednn")
  for target in onednn.TARGETS.values():
    assert target in text, target
  assert "stablehlo.convolution" not in text
  monkeypatch.setattr(xla_cpu, "ONEDNN_WINS", {})
  auto = lowered("auto")  # with an empty table auto's program is XLA's
  assert "cnnjax_onednn" not in auto and "stablehlo.convolution" in auto
  assert "cnnjax_onednn" not in lowered("onednn", disable="onednn")


def test_auto_takes_onednn_for_the_shapes_of_its_table_alone(monkeypatch):
  images = jnp.zeros((2, 12, 12, 3), jnp.float32)
  first, second = jnp.zeros((3, 3, 3, 8), jnp.float32), jnp.zeros((3, 3, 8, 8), jnp.float32)

  def lowered():
    def forward(images, first, second):  # fresh per call: jit caches a trace by function, not by table
      return xla_cpu.conv(xla_cpu.conv(images, first, (1, 1), "SAME"), second, (2, 2), "SAME")
    return jax.jit(forward).lower(images, first, second).as_text()
  assert "cnnjax_onednn" not in lowered()
  monkeypatch.setattr(xla_cpu, "ONEDNN_WINS", {})
  assert "cnnjax_onednn" not in lowered()
  monkeypatch.setattr(xla_cpu, "ONEDNN_WINS", {(12, 12, 3, 8, 3, 3, 1, 1): onednn.OPS})
  text = lowered()
  assert text.count("cnnjax_onednn_conv_forward") == 1 and text.count("stablehlo.convolution") == 1


@pytest.mark.parametrize("ops", [("input_gradient",), ("forward", "kernel_gradient")])
def test_auto_splits_a_convolution_between_onednn_and_xla_by_op_as_its_table_says(monkeypatch, ops):
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.standard_normal((2, 12, 12, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 8)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((2, 12, 12, 8)), jnp.float32)
  monkeypatch.setattr(xla_cpu, "ONEDNN_WINS", {(12, 12, 3, 8, 3, 3, 1, 1): ops})

  def value_and_gradients(images, kernel, cotangent):  # fresh per case: jit caches a trace by function
    return _value_and_gradients(lambda x, w: xla_cpu.conv(x, w, (1, 1), "SAME"), images, kernel, cotangent)
  text = jax.jit(value_and_gradients).lower(images, kernel, cotangent).as_text()
  assert [op for op, target in onednn.TARGETS.items() if target in text] == list(ops)
  assert text.count("stablehlo.convolution") == 3 - len(ops)  # the other ops stay XLA's
  want = _value_and_gradients(lambda x, w: _lax_conv(x, w, (1, 1), ((1, 1), (1, 1))), images, kernel, cotangent)
  _assert_close(jax.jit(value_and_gradients)(images, kernel, cotangent), want)



def test_auto_gives_oneDNN_the_ops_its_shipped_table_lists_for_each_shape():
  assert xla_cpu.ONEDNN_WINS, "the table of bench/onednn_conv.py's measured wins"
  for (height, width, c_in, c_out, kh, kw, sh, sw), ops in xla_cpu.ONEDNN_WINS.items():
    assert ops and set(ops) <= set(onednn.OPS), ops
    images = jnp.zeros((1, height, width, c_in), jnp.float32)
    kernel, pads = jnp.zeros((kh, kw, c_in, c_out), jnp.float32), ((kh // 2, kh // 2), (kw // 2, kw // 2))

    def value_and_gradients(images, kernel):  # fresh per shape: jit caches a trace by function
      outputs, pullback = jax.vjp(lambda x, w: xla_cpu.conv(x, w, (sh, sw), pads), images, kernel)
      return outputs, pullback(outputs)
    text = jax.jit(value_and_gradients).lower(images, kernel).as_text()
    assert [op for op, target in onednn.TARGETS.items() if target in text] == list(ops), (height, width, c_in, c_out)

def _trainer(path: str):
  """A function running a few Adam steps of resnet20 (BatchNorm on batch statistics) at 16px from the same
  initialisation, compiled once along `path`; it returns the losses and the final params."""
  model = models.create("resnet20", num_classes=4)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((4, 16, 16, 3)), jnp.float32)
  labels = jnp.asarray([0, 1, 2, 3])
  variables = model.init(jax.random.key(0), images)
  optimizer = optax.adam(1e-3)

  def step(params, batch_stats, opt_state):
    def loss(params):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                    mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]
    (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, value

  params, batch_stats = variables["params"], variables["batch_stats"]
  with xla_cpu.kernels(path):
    compiled = jax.jit(step).lower(params, batch_stats, optimizer.init(params)).compile()

  def train(steps: int = 3):
    state, losses = (params, batch_stats, optimizer.init(params)), []
    for _ in range(steps):
      *state, value = compiled(*state)
      losses.append(float(value))
    return losses, state[0]
  return train


def test_a_small_resnet_trains_the_same_on_both_paths_and_repeats_bit_for_bit():
  train = _trainer("onednn")
  losses, params = train()
  want_losses, want_params = _trainer("auto")()
  np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
  assert losses[-1] < losses[0]
  for have, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want_params)):
    np.testing.assert_allclose(have, want, rtol=2e-3, atol=2e-5)
  again_losses, again_params = train()  # the same program again: oneDNN's kernels are deterministic
  assert again_losses == losses
  for have, again in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again_params)):
    np.testing.assert_array_equal(have, again)


@pytest.mark.parametrize("name", models.names())
def test_every_architecture_computes_the_same_outputs_and_gradients_on_onednn_and_xla(name):
  """tests/test_kernels.py's case of each architecture (its smallest input, random weights), on the 'onednn'
  path against the portable one: oneDNN's sums round differently, to float tolerance. Pooling layers average:
  max pooling's gradient goes to whichever input is largest, and in this case a near-tie flips under any 1e-7
  change (on the portable path alone, inputs x (1 + 1e-7) move VGG13's block2_conv2 kernel gradient by 3%), which
  would test the tie, not the convolutions."""
  options = {"pooling": "average"} if "pooling" in models.options(name) else {}
  model = models.create(name, num_classes=3, **options)
  shape = test_kernels._smallest_images(model)
  variables = test_kernels._random_like(
      jax.eval_shape(lambda images: model.init(jax.random.key(0), images), shape), seed=0)
  images = jnp.asarray(np.random.default_rng(1).standard_normal(shape.shape), jnp.float32)
  cotangent = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3)), jnp.float32)
  have = test_kernels._outputs_and_gradients(model, variables, images, cotangent, "onednn")
  test_kernels._assert_close(
      have, test_kernels._outputs_and_gradients(model, variables, images, cotangent, "portable"))


def test_under_vmap_an_unbatched_kernel_folds_the_axis_into_the_batch_and_others_run_per_element():
  rng = np.random.default_rng(3)
  inputs = jnp.asarray(rng.standard_normal((3, 2, 8, 8, 4)), jnp.float32)
  kernels = jnp.asarray(rng.standard_normal((3, 3, 3, 4, 5)), jnp.float32)
  padding = ((1, 1), (0, 2))
  loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k, (1, 2), padding)))
  for argnums, in_axes in ((0, (0, None)), ((0, 1), (0, 0)), (1, (None, 0))):
    grad = lambda conv: jax.vmap(jax.grad(loss(conv), argnums), in_axes)
    operands = tuple(whole if axis == 0 else whole[0] for whole, axis in zip((inputs, kernels), in_axes))
    compiled = jax.jit(grad(onednn.conv)).lower(*operands).compile()
    have, want = compiled(*operands), grad(_lax_conv)(*operands)
    for have_leaf, want_leaf in zip(jax.tree_util.tree_leaves(have), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(have_leaf, want_leaf, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(want_leaf))))
    # inputs vmapped over a shared kernel: forward and input gradient are one call each, no loop
    assert ("while" in compiled.as_text()) == (in_axes != (0, None)), in_axes


def test_without_the_library_cnnjax_says_so_once_and_uses_xla(monkeypatch, tmp_path, caplog):
  monkeypatch.setenv("CNNJAX_CACHE_DIR", str(tmp_path))  # an empty cache: no built library
  monkeypatch.setattr(onednn, "_library", None)
  monkeypatch.setattr(onednn, "_told", set())
  inputs = jnp.asarray(np.random.default_rng(4).standard_normal((2, 8, 8, 3)), jnp.float32)
  kernel = jnp.asarray(np.random.default_rng(5).standard_normal((3, 3, 3, 4)), jnp.float32)
  conv = lambda inputs, kernel: xla_cpu.conv(inputs, kernel, (1, 1), "SAME")
  with caplog.at_level(logging.INFO, logger=onednn.__name__), xla_cpu.kernels("onednn"):
    texts = [jax.jit(jax.grad(lambda x: jnp.sum(conv(x, kernel) ** 2))).lower(inputs).as_text() for _ in range(2)]
    values = jax.jit(conv)(inputs, kernel)
  said = [record for record in caplog.records if "not built" in record.getMessage()]
  assert len(said) == 1 and said[0].levelno == logging.WARNING, caplog.records
  assert onednn.BUILD_COMMAND in said[0].getMessage() and "\n" not in said[0].getMessage()
  assert all("cnnjax_onednn" not in text and "stablehlo.convolution" in text for text in texts)
  np.testing.assert_allclose(values, _lax_conv(inputs, kernel, (1, 1), "SAME"), rtol=1e-5, atol=1e-5)


def test_a_bad_thread_count_is_a_one_line_error(monkeypatch):
  monkeypatch.setenv(onednn.THREADS_VARIABLE, "two")
  one_line_error(onednn.threads, "CNNJAX_ONEDNN_THREADS='two'", "positive number")
  monkeypatch.setenv(onednn.THREADS_VARIABLE, "3")
  assert onednn.threads() == 3


def test_missing_onednn_is_a_one_line_build_error(monkeypatch):
  monkeypatch.setattr(onednn, "install_prefix", lambda: None)
  with pytest.raises(onednn.Unavailable) as error:
    onednn.build()
  assert "\n" not in str(error.value) and "cnnjax[onednn]" in str(error.value)


def test_a_onednn_that_is_not_the_openmp_cpu_build_is_a_one_line_build_error(monkeypatch, tmp_path):
  """PyPI's `onednn` wheel is a SYCL build (slower inside a step, bench/RESULTS.md): conv.cc refuses it by name."""
  real = onednn.install_prefix()
  shutil.copytree(real / "include" / "oneapi" / "dnnl", tmp_path / "include" / "oneapi" / "dnnl")
  config = tmp_path / "include" / "oneapi" / "dnnl" / "dnnl_config.h"
  built_for_omp = "#define DNNL_CPU_RUNTIME DNNL_RUNTIME_OMP"
  assert built_for_omp in config.read_text()
  config.write_text(config.read_text().replace(built_for_omp, "#define DNNL_CPU_RUNTIME DNNL_RUNTIME_SYCL"))
  (tmp_path / "lib").symlink_to(real / "lib")
  monkeypatch.setattr(onednn, "install_prefix", lambda: tmp_path)
  monkeypatch.setenv("CNNJAX_CACHE_DIR", str(tmp_path / "cache"))
  with pytest.raises(onednn.Unavailable) as error:
    onednn.build()
  assert "\n" not in str(error.value) and "OpenMP" in str(error.value) and "cnnjax[onednn]" in str(error.value)
  assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-built is left


# --- the fused inference convolution and cnnjax.models.fusion --------------------------------------------------


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
@pytest.mark.parametrize("adds", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_the_fused_call_gives_lax_values_gradients_and_folds_under_vmap(strides, adds, relu):
  rng = np.random.default_rng(4)
  padding = ((1, 1), (0, 2))
  inputs = jnp.asarray(rng.standard_normal((3, 2, 9, 8, 4)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(5), jnp.float32)
  out_shape = jax.eval_shape(lambda x: _lax_conv(x, kernel, strides, padding), inputs[0]).shape
  residual = jnp.asarray(rng.standard_normal((3, *out_shape)), jnp.float32) if adds else None

  def reference(x, w, b, r):
    z = _lax_conv(x, w, strides, padding) + b + (0 if r is None else r)
    return jax.nn.relu(z) if relu else z

  def fused(x, w, b, r):
    return onednn.fused_conv(x, w, b, r, strides, padding, relu)

  def loss(conv):  # sin: every element's cotangent differs
    return lambda x, w, b, r: jnp.sum(jnp.sin(conv(x, w, b, r)))

  argnums = (0, 1, 2, 3) if adds else (0, 1, 2)
  first = None if residual is None else residual[0]
  have = jax.jit(jax.value_and_grad(loss(fused), argnums))(inputs[0], kernel, bias, first)
  test_kernels._assert_close(have, jax.value_and_grad(loss(reference), argnums)(inputs[0], kernel, bias, first),
                             tolerance=2e-5)
  # perturbation chunks vmap the copies (and residuals) over shared weights: one call on the merged batch
  in_axes = (0, None, None, 0 if adds else None)
  compiled = jax.jit(jax.vmap(fused, in_axes)).lower(inputs, kernel, bias, residual).compile()
  assert "while" not in compiled.as_text()
  test_kernels._assert_close(compiled(inputs, kernel, bias, residual),
                             jax.vmap(reference, in_axes)(inputs, kernel, bias, residual), tolerance=2e-5)


def _conv_layers(model, shape) -> int:
  return sum(info.kind == "Conv" for info in models.introspect.layer_infos(model, shape))


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "vgg16", "simple_cnn", "mobilenet"])
def test_inference_fusion_gives_the_same_logits_with_one_call_per_convolution_chain(name):
  """Each architecture's smallest case (random weights, BatchNorm statistics included): the fused forward's
  logits are the portable path's; on CPU every ungrouped convolution is one fused call, and no unfused
  convolution or BatchNorm is left in the compiled program (XLA dropped the layers' own values)."""
  from cnnjax.explain import features
  model = models.create(name, num_classes=3)
  shape = test_kernels._smallest_images(model)
  variables = test_kernels._random_like(
      jax.eval_shape(lambda images: model.init(jax.random.key(0), images), shape), seed=0)
  images = jnp.asarray(np.random.default_rng(1).standard_normal(shape.shape), jnp.float32)
  with xla_cpu.kernels("portable"):
    want = jax.jit(functools.partial(features.apply_logits, model))(variables, images)
  with xla_cpu.kernels("onednn"):
    forward = jax.jit(functools.partial(features.forward_logits, model)).lower(variables, images).compile()
  text = forward.as_text()
  assert text.count("custom_call_target=\"cnnjax_onednn_conv_fused") == _conv_layers(model, shape.shape[1:]) > 0
  assert "cnnjax_onednn_conv_forward" not in text
  test_kernels._assert_close(forward(variables, images), want)
  # elsewhere the layers' own values: a program for CUDA holds no custom call
  assert "cnnjax_onednn" not in test_kernels._exported(
      functools.partial(features.forward_logits, model), (variables, images), ("cuda",), "onednn")
  # without the work-arounds the fusion steps aside as well
  with xla_cpu.kernels("onednn", disable="onednn"):
    plain = jax.jit(functools.partial(features.forward_logits, model)).lower(variables, images).as_text()
  assert "cnnjax_onednn" not in plain


def test_residual_blocks_fuse_their_add_and_relu():
  """resnet20's 19 convolutions: the second of each block's two adds the shortcut and applies the block's ReLU."""
  from cnnjax.models import fusion
  model = models.create("resnet20", num_classes=3)
  images = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda images: model.init(jax.random.key(0), images), images)

  def forward(variables, images):
    with fusion.inference_fusion():
      return model.apply(variables, images)
  with xla_cpu.kernels("onednn"):
    text = jax.jit(forward).lower(variables, images).compile().as_text()
  assert text.count("custom_call_target=\"cnnjax_onednn_conv_fused_add\"") == 9
  assert text.count("custom_call_target=\"cnnjax_onednn_conv_fused\"") == 10


def _random_resnet20_pair_of_images():
  """resnet20 with seeded random variables (BatchNorm statistics included) and two random 32 px images."""
  model = models.create("resnet20", num_classes=10)
  shape = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = test_kernels._random_like(
      jax.eval_shape(lambda images: model.init(jax.random.key(0), images), shape), seed=0)
  return model, variables, jnp.asarray(np.random.default_rng(1).standard_normal(shape.shape), jnp.float32)


def test_occlusion_and_scorecam_give_the_portable_paths_maps_with_the_fused_forward():
  from cnnjax import explain
  model, variables, images = _random_resnet20_pair_of_images()
  targets = jnp.array([3, 7])
  run = {"occlusion": lambda v, x: explain.occlusion(model, v, x, targets, window=(8, 8), strides=(8, 8)),
         "scorecam": lambda v, x: explain.scorecam(model, v, x, targets, chunk_size=16)}
  for method, function in run.items():
    with xla_cpu.kernels("portable"):
      want = jax.jit(function)(variables, images)
    with xla_cpu.kernels("onednn"):
      compiled = jax.jit(function).lower(variables, images).compile()
    assert "cnnjax_onednn_conv_fused" in compiled.as_text(), method
    test_kernels._assert_close(compiled(variables, images), want, tolerance=2e-4)


def test_cost_counts_the_flops_inside_onednn_calls():
  from cnnjax import explain
  model, variables, images = _random_resnet20_pair_of_images()
  with xla_cpu.kernels("onednn"):
    occlusion = jax.jit(lambda v, x: explain.occlusion(model, v, x, 3, window=(8, 8), strides=(8, 8)))
    assert "cnnjax_onednn_conv" in occlusion.lower(variables, images).compile().as_text()
    # One forward of the image and one per window position (4 x 4), whatever kernels compute them.
    forwards = explain.cost(explain.occlusion, model, variables, images, 3, window=(8, 8), strides=(8, 8))["forwards"]
  assert 17 <= forwards < 17.5
