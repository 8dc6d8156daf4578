"""BatchNorm folded into its convolution: the same function on real images, in float32 and bf16."""
import keras
import numpy as np
import pytest
from conftest import TINY

import workbench as wb
from workbench.data.folders import load_folder
from workbench.data.sample import sample_dataset
from workbench.models.fold import fold_batchnorm, foldable_pairs
from workbench.train.precision import set_precision


@pytest.fixture(scope="module")
def images():
    data = load_folder(sample_dataset(), image_size=32, batch_size=16, seed=0, augment=False, verbose=False)
    return np.concatenate([x for x, _ in data.val.take(2)])


def with_statistics(model):
    """Moving statistics and affine parameters far from their initial 0 / 1, as after training."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n, rng = layer.moving_mean.shape[0], np.random.default_rng(len(layer.name))
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n),
                               rng.uniform(0.3, 3.0, n)])
    return model


@pytest.mark.parametrize("config", [TINY, wb.RegNetConfig(w0=16, wa=16.0, wm=2.0, depth=6, group_width=8,
                                                          se_ratio=0.0, name="tiny_regnetx")])
def test_folded_model_computes_the_same_function(images, config, tmp_path):
    model = with_statistics(wb.regnet(config, num_classes=3, input_shape=(32, 32, 3), seed=0))
    before = [w.copy() for w in model.get_weights()]
    norms = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    folded = fold_batchnorm(model)
    assert sorted(foldable_pairs(model)) == sorted(norms)  # in a RegNet every BatchNorm follows a convolution
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(folded.predict(images, verbose=0), expected, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    folded.save(tmp_path / "folded.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "folded.keras").predict(images, verbose=0),
                               expected, atol=1e-5)
    set_precision(folded, "mixed_bfloat16")  # what folding is for: conv + bias + activation fused in bf16
    bf16 = folded.predict(images, verbose=0)
    assert np.abs(bf16 - expected).max() < 0.05 and (bf16.argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_a_batchnorm_whose_convolution_feeds_another_layer_too_stays():
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    shared = keras.layers.Add()([keras.layers.BatchNormalization(name="bn")(conv), conv])
    biased = keras.layers.BatchNormalization(name="bn2")(keras.layers.Conv2D(4, 1, name="biased")(shared))
    model = keras.Model(inputs, biased)
    assert foldable_pairs(model) == {}
    assert [type(layer).__name__ for layer in fold_batchnorm(model).layers].count("BatchNormalization") == 2
