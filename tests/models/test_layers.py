"""GroupConv2D must match keras.layers.Conv2D(groups=G) with padding "same" or "valid"; PointwiseConv2D a 1x1 Conv2D."""

import contextlib

import numpy as np
import pytest
from conftest import slow
import keras
import tensorflow as tf

from workbench.models.layers import GroupConv2D, grouped_conv2d, portable_graphs
from workbench.utils.runtime import accelerator_present, cpu_grouped_conv_gradients

ATOL = 1e-4

# (height, width, in_channels, filters, groups, strides, groups_per_conv)
CASES = [
    (8, 8, 16, 16, 2, 1, None),
    (8, 8, 24, 24, 3, 2, None),  # even size, stride 2: pad 0 top / 1 bottom
    (7, 9, 24, 24, 3, 2, None),  # odd size, stride 2: pad 1 / 1
    (5, 6, 40, 40, 5, 2, 2),  # chunks of 2+2+1 groups
    (6, 5, 32, 48, 4, 1, 1),  # per-group split, filters != in_channels
    (4, 4, 64, 32, 4, 1, None),  # group width 16
    (1, 1, 16, 16, 2, 2, None),  # 1x1 input
    (2, 3, 16, 16, 2, 2, None),
    (6, 6, 8, 8, 8, 1, None),  # depthwise
    (7, 7, 12, 12, 1, 2, None),  # groups=1
]


def _pair(h, w, cin, filters, groups, strides, gpc, seed=0, padding="same"):
    ref = keras.layers.Conv2D(filters, 3, strides, padding=padding, groups=groups,
                              use_bias=False)
    ours = GroupConv2D(filters, 3, strides, groups=groups, groups_per_conv=gpc,
                       padding=padding, implementation="chunked")
    shape = (2, h, w, cin)
    ref.build(shape)
    ours.build(shape)
    rng = np.random.default_rng(seed)
    ours.kernel.assign(rng.standard_normal(ref.kernel.shape).astype("float32") * 0.3)
    ref.kernel.assign(ours.kernel.numpy())
    x = tf.constant(rng.standard_normal(shape).astype("float32"))
    return ref, ours, x


def _fwd_bwd(layer, x, jit):
    y_shape = layer.compute_output_shape(x.shape)
    dy = tf.constant(np.random.default_rng(7).standard_normal(y_shape).astype("float32"))

    @tf.function(jit_compile=jit)
    def f(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        dx, dk = tape.gradient(y, [x, layer.kernel.value], output_gradients=dy)
        return y, dx, dk

    return f(x)


@pytest.mark.parametrize("case", CASES + [
    (10, 10, 24, 24, 3, 2, None, 0, "valid"),   # symmetric padding: ZeroPadding2D + valid
    (9, 8, 32, 32, 2, 1, None, 0, "valid"),
], ids=str)
def test_matches_keras_conv2d(case):
    ref, ours, x = _pair(*case)
    # TF has no CPU gradient for grouped Conv2D without XLA: reference under XLA.
    want = _fwd_bwd(ref, x, jit=True)
    np.testing.assert_allclose(ref(x).numpy(), want[0].numpy(), atol=ATOL)
    for jit in (False, True):
        got = _fwd_bwd(ours, x, jit=jit)
        assert got[0].shape == want[0].shape
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w.numpy(), atol=ATOL)


@pytest.mark.skipif(not cpu_grouped_conv_gradients(), reason="this CPU build has no grouped Conv2D gradient")
def test_native_cpu_path_matches_chunked_and_exports_stay_chunked():
    """Where oneDNN differentiates grouped convs (x86-64, as `import workbench` sets up), "auto" takes the native op."""
    _, chunked, x = _pair(14, 14, 152, 152, 19, 2, None)
    auto = GroupConv2D(152, 3, 2, groups=19)
    auto.build(x.shape)
    auto.kernel.assign(chunked.kernel.numpy())
    ops = lambda layer: {op.type for op in tf.function(layer).get_concrete_function(x).graph.get_operations()}
    assert "ConcatV2" not in ops(auto) and "ConcatV2" in ops(chunked)  # one native op, not chunks
    for got, want in zip(_fwd_bwd(auto, x, jit=False), _fwd_bwd(chunked, x, jit=False)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=ATOL)
    with portable_graphs():
        assert "ConcatV2" in ops(auto)


def test_kernel_layout_matches_conv2d():
    layer = GroupConv2D(56, 3, 2, groups=7)
    layer.build((None, None, None, 56))
    assert layer.kernel.shape == (3, 3, 8, 56)
    assert layer.kernel.path.endswith("kernel")
    assert len(layer.weights) == 1


def test_all_chunk_sizes_equal():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((2, 9, 9, 56)).astype("float32"))
    k = tf.constant(rng.standard_normal((3, 3, 8, 56)).astype("float32"))
    base = grouped_conv2d(x, k, 2, 7, 1).numpy()
    for c in range(2, 8):
        np.testing.assert_allclose(grouped_conv2d(x, k, 2, 7, c).numpy(), base, atol=ATOL)


def _grouped_conv_model():
    inp = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(16, 3, 2, padding="same")(inp)
    h = GroupConv2D(16, 3, strides=2, groups=2, name="gconv")(h)
    h = GroupConv2D(24, 3, groups=2, use_bias=True)(h)
    out = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, out)


def test_dynamic_shapes_and_fit():
    model = _grouped_conv_model()
    for size in (17, 32, 5):
        x = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype("float32")
        assert model.predict(x, verbose=0).shape == (2, 24)
    model.compile("sgd", "mse")  # default jit_compile="auto"
    x = np.random.default_rng(0).standard_normal((4, 16, 16, 3)).astype("float32")
    hist = model.fit(x, np.zeros((4, 24), "float32"), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])


def test_keras_save_load_roundtrip(tmp_path):
    model = _grouped_conv_model()
    x = np.random.default_rng(0).standard_normal((2, 19, 13, 3)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    assert isinstance(loaded.get_layer("gconv"), GroupConv2D)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_get_config_roundtrip():
    layer = GroupConv2D(32, (3, 3), strides=2, groups=4, use_bias=True,
                        groups_per_conv=2, name="g")
    config = layer.get_config()
    clone = GroupConv2D.from_config(config)
    assert clone.get_config() == config
    assert (clone.filters, clone.kernel_size, clone.strides, clone.groups) == (32, (3, 3), 2, 4)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    layer = GroupConv2D(16, 3, 2, groups=2, dtype=policy)
    x = tf.random.normal((2, 7, 7, 16))
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, "float32"))
    assert y.dtype == layer.compute_dtype
    assert layer.kernel.dtype == "float32"
    grad = tape.gradient(loss, layer.kernel.value)
    assert grad is not None and np.isfinite(grad.numpy()).all()


@pytest.mark.parametrize("size", [1, 3])
def test_pointwise_conv_is_conv2d_with_the_same_weights(size):
    """On a 1x1 input (squeeze-and-excitation) a matmul, elsewhere and in exports the convolution: the same
    outputs and gradients as keras.layers.Conv2D."""
    from workbench.models.layers import PointwiseConv2D

    x = tf.constant(np.random.default_rng(size).normal(size=(4, size, size, 24)).astype("float32"))
    ours = PointwiseConv2D(8, 1, activation="relu", use_bias=True, bias_initializer="random_normal")
    ref = keras.layers.Conv2D(8, 1, activation="relu", use_bias=True)
    ours.build(x.shape), ref.build(x.shape)
    ref.set_weights(ours.get_weights())
    results = []
    for layer, tracing in ((ours, contextlib.nullcontext()), (ours, portable_graphs()), (ref, contextlib.nullcontext())):
        with tracing, tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * tf.sin(x[..., :8]))
        results.append([loss, *tape.gradient(loss, [x, layer.kernel.value, layer.bias.value])])
    for ours_result, traced, reference in zip(*results):
        np.testing.assert_allclose(ours_result.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(traced.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
    ops = {op.type for op in tf.function(ours).get_concrete_function(x).graph.get_operations()}
    assert ("MatMul" in ops) == (size == 1) and ("Conv2D" in ops) == (size != 1)
