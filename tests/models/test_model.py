"""The Keras model: structure, stages, input shapes, save/load."""
import keras
import numpy as np
import pytest

import workbench as wb
from conftest import TINY, slow, tiny_regnet
from workbench.models.design import complexity, get_config


@pytest.fixture(scope="module")
def y200():
    return wb.regnet("regnety_200mf", num_classes=5, input_shape=(None, None, 3))


@pytest.mark.parametrize("variant", ["regnety_200mf", "regnetx_200mf", "regnety_800mf",
                                     "regnetx_1.6gf", "regnetx_400mf_tv", "regnety_800mf_tv",
                                     pytest.param("regnety_64gf", marks=slow)])
def test_parameter_count_equals_computed_complexity(variant):
    model = wb.regnet(variant)
    cx = complexity(get_config(variant))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == cx["params"]
    assert model.count_params() == cx["params"] + cx["bn_stats"]


def test_stages_partition_the_layers(y200):
    assert wb.STAGES == ("stem", "stage1", "stage2", "stage3", "stage4", "head")
    staged = [layer for s in wb.STAGES for layer in wb.stage_layers(y200, s)]
    inputs = [layer for layer in y200.layers if isinstance(layer, keras.layers.InputLayer)]
    assert len(staged) + len(inputs) == len(y200.layers)
    assert [layer.name for layer in wb.stage_layers(y200, "head")] == ["head_pool", "head_fc"]
    depths = [s["depth"] for s in get_config("regnety_200mf").stages()]
    blocks = {layer.name.split("_")[1] for layer in wb.stage_layers(y200, "stage4")}
    assert len(blocks) == depths[3] == 7
    with pytest.raises(ValueError, match="stage5"):
        wb.stage_layers(y200, "stage5")


def test_layers_of_the_same_shape_start_differently(y200):
    a, b = (y200.get_layer(f"stage4_block{i}_conv1").kernel.numpy() for i in (2, 3))
    assert a.shape == b.shape and not np.allclose(a, b)
    assert 0.5 < np.std(a) * np.sqrt(a.shape[-1]) / np.sqrt(2) < 1.5    # He normal, fan-out


@pytest.mark.parametrize("size", [32, 57, 96, 130])
def test_any_input_size_from_32(y200, size):
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size + 3, 3)).astype("float32")
    probs = y200.predict(x, verbose=0)
    assert probs.shape == (2, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("shape", [(31, 64, 3), (64, 64, 1), (64, 64, 4), (64, 64)])
def test_bad_input_shapes(shape):
    with pytest.raises(ValueError, match="input_shape"):
        wb.regnet("regnety_200mf", input_shape=shape)


def test_feature_extractor_outputs():
    kw = dict(include_top=False, input_shape=(64, 64, 3))
    assert wb.regnet("regnetx_200mf", **kw).output_shape == (None, 2, 2, 368)
    assert wb.regnet("regnetx_200mf", pooling="avg", **kw).output_shape == (None, 368)
    assert wb.regnet("regnetx_200mf", pooling="max", **kw).output_shape == (None, 368)


def test_keras_file_round_trip_needs_no_custom_objects(y200, tmp_path):
    path = tmp_path / "m.keras"
    y200.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(y200.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in y200.layers]


def test_custom_design_point_builds_and_trains():
    cfg = TINY
    model = tiny_regnet()
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    history = model.fit(x, np.arange(8) % 3, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.count_params() == complexity(cfg, num_classes=3)["params"] + complexity(cfg)["bn_stats"]


def test_unknown_variant():
    with pytest.raises(ValueError, match="regnety_600mf"):
        wb.regnet("regnety_60mf")
