"""BatchNorm: Keras' BatchNormalization by TF's fused kernel, and its half-precision paths on a CPU."""

import numpy as np
import pytest
from conftest import slow
import keras
import tensorflow as tf

from workbench.models.batchnorm import BatchNorm, _training_on_view
from workbench.utils.runtime import accelerator_present


def _values(rng, channels):
    """gamma, beta, moving mean, moving variance."""
    return [rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.2, channels), rng.normal(0, 0.2, channels),
            rng.uniform(0.5, 2, channels)]


def _run(layer, x, values, training):
    """(output, gradients of x / gamma / beta, moving mean, moving variance) of a fresh `layer` set to `values`."""
    layer.build(x.shape)
    layer.set_weights(values)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, "float32") * tf.sin(x))
    return [y, *tape.gradient(loss, [x, layer.gamma.value, layer.beta.value]),
            layer.moving_mean, layer.moving_variance]


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_matches_keras(training):
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 5, 6, 8)).astype("float32"))
    values = _values(rng, 8)
    ours = _run(BatchNorm(momentum=0.9, epsilon=1e-5), x, values, training)
    ref = _run(keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5), x, values, training)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    frozen = BatchNorm()
    frozen.build(x.shape)
    frozen.trainable = False
    frozen(x, training=True)
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.zeros(8))   # inference mode


@pytest.mark.parametrize("channels, parts", [(8, 2), (24, 2), (12, 4), (10, 8), (7, 16)])
def test_statistics_combined_from_a_view_equal_the_channels(channels, parts):
    """The view's algebra in float32 (where the fused op runs at any width): output, statistics and
    gradients equal the fused op's on the tensor itself."""
    rng = np.random.default_rng(channels)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 6, 8, channels)).astype("float32"))
    gamma, beta = (tf.constant(v.astype("float32")) for v in _values(rng, channels)[:2])
    dy = tf.constant(rng.normal(0, 1, x.shape).astype("float32"))
    results = []
    for normalize in (lambda: _training_on_view(x, gamma, beta, 1e-5, parts),
                      lambda: tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-5, is_training=True)):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y, mean, variance = normalize()
        results.append([y, mean, variance, *tape.gradient(y, [x, gamma, beta], output_gradients=dy)])
    for ours, ref in zip(*results):
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4 * np.abs(ref.numpy()).max())


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("policy, channels, path, tolerance", [
    ("mixed_bfloat16", 8, "view", 2e-2), ("mixed_bfloat16", 24, "view", 2e-2),
    ("mixed_bfloat16", 16, "fused", 2e-2), ("mixed_float16", 8, "float32", 2e-3)])
def test_half_precision_batchnorm_matches_float32(policy, channels, path, tolerance, training):
    """bf16 / fp16 against float32: on a CPU bf16 off a multiple of 16 channels runs on a view, fp16 in float32."""
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 6, 6, channels)).astype("float32"))
    values = _values(rng, channels)
    reference = _run(BatchNorm(momentum=0.9, epsilon=1e-5), x, values, training)
    half = BatchNorm(momentum=0.9, epsilon=1e-5, dtype=policy)
    results = _run(half, x, values, training)
    assert results[0].dtype == half.compute_dtype
    assert half.half_path(channels) == ("fused" if accelerator_present() else path)
    assert half.moving_mean.dtype == half.moving_variance.dtype == half.gamma.dtype == "float32"
    for a, b in zip(results, reference):
        a, b = np.asarray(tf.cast(a, "float32")), np.asarray(b)
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * np.abs(b).max())
    if training:
        assert not np.allclose(np.asarray(results[3]), values[2])   # the moving mean moved


@pytest.mark.parametrize("batch", [2, 3])
def test_bf16_with_an_unknown_batch_takes_the_view_or_float32_when_run(batch):
    """5x5 pixels and 8 channels: the view (two pixels side by side) divides an even batch only, decided at run
    time when the batch is unknown; both give float32's output and moving statistics."""
    rng = np.random.default_rng(batch)
    x = tf.constant(rng.normal(1.0, 2.0, (batch, 5, 5, 8)).astype("float32"))
    values = _values(rng, 8)
    outputs = []
    for policy in ("float32", "mixed_bfloat16"):
        layer = BatchNorm(momentum=0.5, dtype=policy)
        layer.build(x.shape)
        layer.set_weights(values)
        step = tf.function(lambda x, layer=layer: layer(x, training=True),
                           input_signature=[tf.TensorSpec([None, 5, 5, 8], tf.float32)])
        outputs.append([step(x), layer.moving_mean, layer.moving_variance])
    for a, b in zip(*outputs):
        b = np.asarray(tf.cast(b, "float32"))
        np.testing.assert_allclose(np.asarray(tf.cast(a, "float32")), b, rtol=2e-2, atol=2e-2 * np.abs(b).max())


@slow
def test_a_short_fine_tune_in_mixed_bfloat16_has_finite_losses():
    from conftest import tiny_regnet

    from workbench.train.precision import set_precision

    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32"), rng.integers(0, 3, 32)
    model = tiny_regnet()
    set_precision(model, "mixed_bfloat16")
    bn = next(layer for layer in model.layers if isinstance(layer, BatchNorm))
    before = bn.moving_mean.numpy().copy()
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert bn.compute_dtype == "bfloat16" and bn.moving_mean.dtype == "float32"
    assert not np.allclose(bn.moving_mean.numpy(), before)
    probabilities = model.predict(x, verbose=0)
    assert probabilities.dtype == "float32" and np.isfinite(probabilities).all()


@pytest.mark.parametrize("size", [32, 5])
@pytest.mark.parametrize("policy, tolerance", [("float32", 1e-6), ("mixed_bfloat16", 4e-2)])
def test_preprocess_normalizes_by_channel_on_a_view_and_plainly_in_exports(policy, tolerance, size):
    """The stem's normalization runs on the fused kernel where the pixels divide into 16s (32 x 32), plainly
    where not (5 x 5) and in exports; all equal (x - 255 mean) / (255 std)."""
    from workbench.models.layers import portable_graphs
    from workbench.models.regnet import CONVENTIONS, Preprocess

    convention = CONVENTIONS["torch"]
    layer = Preprocess(convention["mean"], convention["std"], dtype=policy)
    x = np.random.default_rng(size).uniform(0, 255, (2, size, size, 3)).astype("float32")
    expected = (x - 255 * np.array(convention["mean"])) / (255 * np.array(convention["std"]))
    with portable_graphs():
        plain = layer(x)
    for y in (layer(x), plain):
        assert y.dtype == layer.compute_dtype
        np.testing.assert_allclose(np.asarray(tf.cast(y, "float32")), expected, rtol=tolerance, atol=tolerance)
