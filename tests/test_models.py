"""Model zoo: shapes, Keras parameter counts and layer names, options, errors, dropout, dtypes, sync BN, summary.

Big models are only traced (`jax.eval_shape`); real forward passes use tiny inputs.
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.models import layers, resnet

# Smallest convenient input per model (the default is 32x32).
INPUT_SIZE = {"smile_cnn": 64, "catdog_cnn": 22, "catdog_cnn_chollet": 22, "lenet5": 32, "alexnet": 67,
              "mobilenet": 32}
KEYS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def abstract_images(size, channels=3, batch=2):
  return jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)


def abstract_variables(model, images, **kwargs):
  return jax.eval_shape(lambda x: model.init(KEYS, x, **kwargs), images)


def random_variables(model, images, seed=0):
  """Variables with random values, made in numpy: a jitted `init` would cost seconds of XLA compilation."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "var" in name:  # BN running variance must be positive
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, images))


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def keras_count(model, size, channels=3) -> int:
  variables = abstract_variables(model, abstract_images(size, channels, batch=1))
  return count({k: v for k, v in variables.items() if k in ("params", "batch_stats")})


def layer_outputs(model, size, channels=3):
  """{layer name: output shape} of the model's direct children, traced only."""
  variables = abstract_variables(model, abstract_images(size, channels, batch=1), capture_intermediates=True)
  return {name: outputs["__call__"][0].shape for name, outputs in variables["intermediates"].items()
          if name != "__call__"}


def ordered_layer_names(model, size, channels=3):
  """Names of the model's direct children in call order (a dict through eval_shape would come back sorted)."""
  called = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and len(context.module.path) == 1:
      called.append(context.module.path[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    abstract_variables(model, abstract_images(size, channels, batch=1))
  return called


def images(size, channels=3, batch=2, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, channels))


def assert_one_line_value_error(match, fn, *args, **kwargs):
  with pytest.raises(ValueError, match=match) as error:
    fn(*args, **kwargs)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", models.names())
def test_every_model_gives_float32_logits_in_both_modes(name):
  model = models.create(name, num_classes=7)
  batch = abstract_images(INPUT_SIZE.get(name, 32))
  logits, variables = jax.eval_shape(lambda x: model.init_with_output(KEYS, x), batch)  # train=False
  assert logits == jax.ShapeDtypeStruct((2, 7), jnp.float32)
  logits, updates = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": KEYS["dropout"]}),
      variables, batch)
  assert logits.shape == (2, 7) and set(updates) <= {"batch_stats"}
  assert set(updates) == ({"batch_stats"} if "batch_stats" in variables else set())
  assert "predictions" in variables["params"] or "conv_preds" in variables["params"]


@pytest.mark.parametrize("name, options, size, channels, total", [
    ("vgg16", {}, 224, 3, 138_357_544),
    ("resnet50", {}, 224, 3, 25_636_712),  # Keras counts BN moving statistics
    ("mobilenet", {"alpha": 0.25}, 224, 3, 475_544),
    ("lenet5", {}, 32, 1, 61_706),
])
def test_parameter_counts_match_keras(name, options, size, channels, total):
  classes = 10 if name == "lenet5" else 1000
  assert keras_count(models.create(name, num_classes=classes, **options), size, channels) == total


def test_cifar_resnets_match_the_pytorch_parameter_counts():
  # Counts of the published checkpoints (trainable parameters; BN statistics are buffers in PyTorch).
  for name, expected in (("resnet20", 269_722), ("resnet32", 464_154), ("resnet44", 658_586), ("resnet56", 853_018)):
    variables = abstract_variables(models.create(name, num_classes=10), abstract_images(32, batch=1))
    assert count(variables["params"]) == expected, name


def test_vgg16_has_the_keras_layers_in_order():
  expected = [f"block{b}_conv{i}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, n + 1)]
  model = models.create("vgg16", num_classes=1000)
  assert [n for n in ordered_layer_names(model, 32) if "conv" in n] == expected
  outputs = layer_outputs(model, 224)
  assert outputs["block5_conv3"] == (1, 14, 14, 512) and outputs["block5_pool"] == (1, 7, 7, 512)
  assert outputs["flatten"] == (1, 25088) and outputs["fc1"] == outputs["fc2"] == (1, 4096)
  assert outputs["predictions"] == (1, 1000)


def test_resnet50_has_the_keras_layers():
  model = models.create("resnet50", num_classes=1000)
  outputs = layer_outputs(model, 224)
  assert outputs["conv1_conv"] == (1, 112, 112, 64) and outputs["pool1_pool"] == (1, 56, 56, 64)
  assert outputs["conv2_block1_0_conv"] == (1, 56, 56, 256)  # projection shortcut
  assert outputs["conv3_block1_1_conv"] == (1, 28, 28, 128)  # v1: the stride is on the first 1x1
  assert outputs["conv5_block3_out"] == (1, 7, 7, 2048) and outputs["avg_pool"] == (1, 2048)
  for name in ("conv1_bn", "conv1_relu", "conv2_block1_0_bn", "conv2_block1_1_relu", "conv2_block1_2_conv",
               "conv2_block1_3_bn", "conv2_block1_add", "conv4_block6_out", "predictions"):
    assert name in outputs
  assert "conv2_block2_0_conv" not in outputs  # identity shortcut when shapes agree
  params = abstract_variables(model, abstract_images(32, batch=1))["params"]
  assert params["conv5_block3_3_conv"]["kernel"].shape == (1, 1, 512, 2048)
  assert set(params["conv1_bn"]) == {"scale", "bias"}


def test_resnet50_flatten_dropout_head_of_the_transfer_tutorial():
  """ResNet50 notop (23,587,712 Keras params) + Flatten + Dropout(0.2) + Dense(10) on a 2x2 map (64 px)."""
  model = models.create("resnet50", num_classes=10, head="flatten", dropout=0.2)
  outputs = layer_outputs(model, 64)
  assert outputs["flatten"] == (1, 8192) and outputs["dropout"] == (1, 8192) and "avg_pool" not in outputs
  assert keras_count(model, 64) == 23_587_712 + 8192 * 10 + 10
  with pytest.raises(ValueError, match="head='top'"):
    models.create("resnet20", num_classes=10, head="top").init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def test_stride_on_3x3_moves_the_downsampling_to_the_3x3_conv():
  outputs = layer_outputs(models.create("resnet50", num_classes=10, stride_on_3x3=True), 64)
  assert outputs["conv3_block1_1_conv"] == (1, 16, 16, 128)
  assert outputs["conv3_block1_2_conv"] == (1, 8, 8, 128)


def test_basic_block_resnets_project_only_when_the_shape_changes():
  outputs = layer_outputs(models.create("resnet18", num_classes=10), 64)
  assert "conv2_block1_0_conv" not in outputs and outputs["conv3_block1_0_conv"] == (1, 8, 8, 128)
  assert outputs["conv5_block2_out"] == (1, 2, 2, 512) and "conv2_block1_3_conv" not in outputs
  cifar = layer_outputs(models.create("resnet20", num_classes=10), 32)
  assert cifar["conv1_conv"] == (1, 32, 32, 16) and cifar["conv4_block3_out"] == (1, 8, 8, 64)
  assert not any(name.endswith("_0_conv") for name in cifar)  # option A shortcuts have no parameters


def test_zero_pad_shortcut_is_option_a():
  inputs = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
  outputs = resnet._zero_pad_shortcut(inputs, 6, 2)
  np.testing.assert_array_equal(outputs[..., 2:4], inputs[:, ::2, ::2, :])
  assert outputs.shape == (2, 2, 2, 6) and not outputs[..., :2].any() and not outputs[..., 4:].any()


def test_mobilenet_has_the_keras_layers():
  model = models.create("mobilenet", num_classes=1000, alpha=0.25)
  outputs = layer_outputs(model, 224)
  for name in ("conv1", "conv1_bn", "conv1_relu", "conv_dw_1", "conv_dw_1_bn", "conv_dw_1_relu", "conv_pw_1",
               "conv_pw_13_relu", "global_average_pooling2d", "dropout", "conv_preds"):
    assert name in outputs
  assert outputs["conv1"] == (1, 112, 112, 8) and outputs["conv_pw_13_relu"] == (1, 7, 7, 256)
  assert outputs["conv_preds"] == (1, 1, 1, 1000)
  params = abstract_variables(model, abstract_images(32, batch=1))["params"]
  assert params["conv_dw_2"]["depthwise_kernel"].shape == (3, 3, 16, 1)
  assert set(params["conv_pw_2"]) == {"kernel"} and set(params["conv_preds"]) == {"kernel", "bias"}


def test_depthwise_conv_filters_each_channel_with_its_own_kernels():
  inputs = images(5, channels=2, batch=1)
  module = layers.DepthwiseConv((3, 3), depth_multiplier=2, padding="VALID")
  variables = random_variables(module, inputs)
  kernel = variables["params"]["depthwise_kernel"]  # (3, 3, C, multiplier)
  outputs = jax.jit(module.apply)(variables, inputs)
  for channel in range(2):
    for m in range(2):
      image, filters = np.asarray(inputs[0, ..., channel]), np.asarray(kernel[:, :, channel, m])
      expected = [[np.sum(image[i:i + 3, j:j + 3] * filters) for j in range(3)] for i in range(3)]
      np.testing.assert_allclose(outputs[0, ..., channel * 2 + m], expected, rtol=1e-5, atol=1e-6)


def test_sequential_models_use_keras_automatic_names():
  model = models.create("simple_cnn", num_classes=10)
  assert ordered_layer_names(model, 32) == ["conv2d", "conv2d_1", "max_pooling2d", "conv2d_2", "conv2d_3",
                                            "max_pooling2d_1", "flatten", "dense", "dropout", "predictions"]
  assert layer_outputs(model, 32)["max_pooling2d_1"] == (1, 6, 6, 32)
  bn = ordered_layer_names(models.create("simple_cnn_bn", num_classes=10), 32)
  assert bn[:5] == ["conv2d", "conv2d_1", "batch_normalization", "activation", "max_pooling2d"]
  vgg_bn = layer_outputs(models.create("vgg11", num_classes=10, batch_norm=True), 32)
  assert {"block1_conv1", "block1_conv1_bn", "block1_conv1_relu", "block5_conv2_bn"} <= set(vgg_bn)


def test_head_and_batch_norm_options_change_the_structure():
  def params_of(**options):
    model = models.create("vgg11", num_classes=10, **options)
    return abstract_variables(model, abstract_images(32, batch=1))

  flatten, gap = params_of(), params_of(head="gap")
  assert count(gap["params"]) < count(flatten["params"]) and "fc1" not in gap["params"]
  assert "batch_stats" not in flatten and "block3_conv2_bn" in params_of(batch_norm=True)["batch_stats"]
  assert "dropout" in layer_outputs(models.create("vgg11", num_classes=10, dropout=0.5), 32)
  without_bn = abstract_variables(models.create("smile_cnn", num_classes=1, batch_norm=False), abstract_images(64))
  assert "batch_stats" not in without_bn
  # dropout=None (the default) is each architecture's own head: smile_cnn's chapter has none after its Dense 128.
  smile = layer_outputs(models.create("smile_cnn", num_classes=2), 64)
  assert "dropout_1" in smile and "dropout_2" not in smile
  assert "dropout_2" in layer_outputs(models.create("smile_cnn", num_classes=2, dropout=0.5), 64)


def test_pooling_and_activation_options_change_the_outputs():
  batch = images(32)
  variables = random_variables(models.create("simple_cnn", num_classes=10), batch)  # same parameters for all variants
  logits = {options: jax.jit(models.create("simple_cnn", num_classes=10, **dict(options)).apply)(variables, batch)
            for options in ((), (("pooling", "average"),), (("activation", "tanh"),))}
  reference = logits[()]
  for options, other in logits.items():
    if options:
      assert not np.allclose(reference, other, atol=1e-4), options


@pytest.mark.parametrize("call, match", [
    (lambda: models.create("resnet51", num_classes=10), "unknown model 'resnet51'; choose one of .*resnet50"),
    (lambda: models.create("vgg16", num_classes=10, depth=19), "no option.*depth; valid options: activation"),
    (lambda: models.create("resnet18", num_classes=10, stride_on_3x3=True), "no option.*stride_on_3x3"),
    (lambda: models.create("vgg16", num_classes=10, activation="swish"), "activation='swish' is invalid"),
    (lambda: models.create("vgg16", num_classes=10, pooling="min"), "pooling='min' is invalid"),
    (lambda: models.create("vgg16", num_classes=10, head="dense"), "head='dense' is invalid"),
    (lambda: models.create("alexnet", num_classes=10, dropout=1.5), "dropout=1.5 is invalid"),
    (lambda: models.create("lenet5", num_classes=0), "num_classes=0 is invalid"),
    (lambda: models.create("simple_cnn", num_classes=10, dtype="int8"), "dtype='int8' is not a floating dtype"),
    (lambda: models.create("mobilenet", num_classes=10, alpha=0), "alpha=0 is invalid"),
])
def test_bad_names_and_options_raise_one_line_errors(call, match):
  assert_one_line_value_error(match, call)


@pytest.mark.parametrize("name, smallest", [("alexnet", 67), ("vgg16", 32), ("lenet5", 16), ("catdog_cnn", 8),
                                            ("catdog_cnn_chollet", 22), ("smile_cnn", 4), ("mobilenet", 31),
                                            ("simple_cnn", 10)])
def test_too_small_inputs_raise_a_one_line_error_at_the_exact_limit(name, smallest):
  model = models.create(name, num_classes=3)
  abstract_variables(model, abstract_images(smallest))  # works at the limit
  too_small = smallest - 1
  assert_one_line_value_error(f"input {too_small}x{too_small} is too small for {name}: .* at least "
                              f"{smallest}x{smallest}", abstract_variables, model, abstract_images(too_small))


@pytest.mark.parametrize("ops", [
    [((3, 3), (2, 2), "SAME"), ((3, 3), (2, 2), "VALID")],
    [((3, 5), (2, 1), ((0, 1), (1, 1)))] * 2,
    [((11, 11), (4, 4), "VALID"), ((3, 3), (2, 2), "VALID"), ((5, 5), (1, 1), "SAME"), ((2, 2), (2, 2), "VALID")],
])
def test_min_input_size_is_the_smallest_size_xla_accepts(ops):
  def output_size(height, width):
    x = jax.ShapeDtypeStruct((height, width), jnp.float32)
    for window, strides, padding in ops:
      try:
        x = jax.eval_shape(lambda y: jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, window, strides, padding), x)
      except (TypeError, ValueError):
        return (0, 0)
    return x.shape

  smallest = layers.min_input_size(ops)
  for axis in range(2):
    size = list(smallest)
    assert min(output_size(*size)) >= 1
    size[axis] -= 1
    assert min(output_size(*size)) == 0, (axis, size)


def test_non_image_inputs_are_rejected():
  assert_one_line_value_error(r"expected a batch of images \(N, H, W, C\)", abstract_variables,
                              models.create("lenet5", num_classes=10), jax.ShapeDtypeStruct((32, 32, 1), jnp.float32))


def test_dropout_uses_the_rng_only_when_training():
  model = models.create("simple_cnn", num_classes=10)
  batch = images(32)
  variables = random_variables(model, batch)
  train = jax.jit(lambda key: model.apply(variables, batch, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": key})[0])
  first, again, other = train(jax.random.key(3)), train(jax.random.key(3)), train(jax.random.key(4))
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)
  infer = jax.jit(model.apply)
  np.testing.assert_array_equal(infer(variables, batch), infer(variables, batch))
  assert not np.allclose(infer(variables, batch), first)


def test_bfloat16_keeps_float32_parameters_and_logits():
  batch = images(12, batch=4)
  small_resnet = resnet.cifar(blocks_per_stage=1)  # the CIFAR family's code, 8 layers deep to compile fast
  for make, dtype in ((lambda **kw: models.create("simple_cnn_bn", num_classes=10, **kw), "bfloat16"),
                      (lambda **kw: resnet.ResNet(num_classes=10, **small_resnet, **kw), jnp.bfloat16)):
    reference_model = make()
    variables = random_variables(reference_model, batch)
    model = make(dtype=dtype)
    init_dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(abstract_variables(model, batch))}
    assert init_dtypes == {jnp.dtype(jnp.float32)}
    reference, logits = jax.jit(reference_model.apply)(variables, batch), jax.jit(model.apply)(variables, batch)
    assert logits.dtype == jnp.float32
    scale = float(jnp.abs(reference).max())
    np.testing.assert_allclose(logits, reference, atol=0.05 * scale)
    assert not np.array_equal(logits, reference)  # it really ran in bfloat16


def outer_primitives(jaxpr):
  """Primitive names of a jaxpr and its sub-jaxprs, without looking inside custom_vjp calls; a shape-preserving
  custom_vjp call (a modified ReLU; max pooling is one too, but shrinks its input) is named 'elementwise_vjp'."""
  for equation in jaxpr.eqns:
    if equation.primitive.name.startswith("custom_vjp"):
      elementwise = equation.outvars[0].aval.shape == equation.invars[-1].aval.shape
      yield "elementwise_vjp" if elementwise else equation.primitive.name
      continue
    yield equation.primitive.name
    for value in equation.params.values():
      for inner in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(inner, "jaxpr", inner)
        if hasattr(inner, "eqns"):
          yield from outer_primitives(inner)


def test_every_relu_goes_through_the_switchable_activation():
  # Under a backprop modifier every ReLU becomes a custom_vjp call; a plain one would stay a `max`.
  from cnnjax.explain import backprop
  for name, size, relus in (("resnet50", 32, 1 + 16 * 3), ("vgg16", 32, 13 + 2), ("mobilenet", 32, 1 + 13 * 2),
                            ("resnet20", 8, 1 + 9 * 2), ("simple_cnn_bn", 32, 5), ("alexnet", 67, 5 + 3)):
    model = models.create(name, num_classes=3)
    batch = abstract_images(size, batch=1)
    variables = abstract_variables(model, batch)
    with backprop.modified_backprop("guided"):
      jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, batch)
    primitives = list(outer_primitives(jaxpr.jaxpr))
    assert primitives.count("elementwise_vjp") == relus, name
    assert "max" not in primitives and "custom_jvp_call" not in primitives, name  # no plain jax.nn.relu


def test_sync_batch_norm_averages_statistics_over_the_mapped_axis():
  devices = jax.local_device_count()
  if devices < 2:
    pytest.skip("needs several (virtual) devices; tests/conftest.py asks for four")
  batch = images(32, batch=devices)
  local = models.create("simple_cnn_bn", num_classes=10)
  variables = random_variables(local, batch)
  _, expected = jax.jit(lambda v, x: local.apply(v, x, train=True, mutable=["batch_stats"],
                                                 rngs={"dropout": KEYS["dropout"]}))(variables, batch)
  synced = models.create("simple_cnn_bn", num_classes=10, axis_name="batch")
  step = jax.pmap(lambda x: synced.apply(variables, x, train=True, mutable=["batch_stats"],
                                         rngs={"dropout": KEYS["dropout"]})[1], axis_name="batch")
  updated = step(batch[:, None])
  for got, want in zip(jax.tree_util.tree_leaves(updated), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-4, atol=1e-6)


def test_summary_prints_the_keras_table_and_totals():
  lines = []
  text = models.summary(models.create("vgg16", num_classes=1000), (224, 224, 3), print_fn=lines.append)
  assert lines == text.splitlines()
  assert "Total params: 138,357,544" in lines and "Non-trainable params: 0" in lines
  rows = [line.split() for line in lines if line.startswith(("block", "fc", "flatten", "predictions"))]
  assert rows[0][:2] == ["block1_conv1", "(Conv)"] and rows[0][-1] == "1,792"
  assert rows[-1][0] == "predictions" and rows[-1][-1] == "4,097,000" and len(rows) == 22
  assert "(None, 7, 7, 512)" in text
  resnet_lines = models.summary(models.create("resnet50", num_classes=1000), (1, 224, 224, 3),
                                print_fn=lambda line: None).splitlines()
  assert "Total params: 25,636,712" in resnet_lines and "Non-trainable params: 53,120" in resnet_lines
  assert any(line.startswith("conv2_block1_add (Add)") for line in resnet_lines)
  assert_one_line_value_error("input_shape", models.summary, models.create("lenet5", num_classes=10), (32, 32))


@pytest.mark.parametrize("name, size", [("mobilenet", 65), ("resnet50", 64)])
def test_matches_keras_applications_with_the_same_weights(name, size):
  os.environ.setdefault("KERAS_BACKEND", "jax")
  keras = pytest.importorskip("keras")
  build = {"mobilenet": lambda: keras.applications.MobileNet(alpha=0.25, weights=None, input_shape=(size, size, 3),
                                                             classifier_activation=None),
           "resnet50": lambda: keras.applications.ResNet50(weights=None, input_shape=(size, size, 3),
                                                           classifier_activation=None)}[name]
  keras_model = build()
  rng = np.random.default_rng(0)
  variables = {"params": {}, "batch_stats": {}}
  for layer in keras_model.layers:
    for weight in layer.weights:
      kind = weight.path.split("/")[-1]
      value = np.asarray(weight.numpy())
      if kind in ("moving_mean", "moving_variance"):  # random statistics, so that inference BN matters
        value = rng.normal(size=value.shape) * 0.1 if kind == "moving_mean" else rng.uniform(0.5, 1.5, value.shape)
        weight.assign(value)
        variables["batch_stats"].setdefault(layer.name, {})["mean" if kind == "moving_mean" else "var"] = value
      else:
        kind = "depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D) else kind
        variables["params"].setdefault(layer.name, {})[{"gamma": "scale", "beta": "bias"}.get(kind, kind)] = value
  batch = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  model = models.create(name, num_classes=1000, **({"alpha": 0.25} if name == "mobilenet" else {}))
  expected_tree = jax.tree_util.tree_structure(abstract_variables(model, abstract_images(size, batch=1)))
  assert jax.tree_util.tree_structure(variables) == expected_tree
  np.testing.assert_allclose(model.apply(variables, batch), np.asarray(keras_model(batch, training=False)),
                             rtol=1e-4, atol=1e-5)
