"""Hub-format SavedModels as fine-tunable Keras 3 layers, and hub.KerasLayer in tf_keras."""
import json
import os
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import workbench as wb
import workbench.models.tfhub
from conftest import slow, tiny_regnet
from workbench.models.contract import feature_extractor
from workbench.deploy.export import export
from workbench.models.tfhub import (HubBackbone, HubModelUnavailableError, hub_backbone, hub_classifier,
                           hub_handle, is_hub_variant)

SIZE = 64
SEED_HANDLE = "https://tfhub.dev/adityakane2001/regnety200mf_feature_extractor/1"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny RegNet, its Hub-format export and a batch of images."""
    model = tiny_regnet(size=SIZE, seed=1)
    path = export(model, tmp_path_factory.mktemp("export") / "hub", "hub", verbose=False)["path"]
    x = np.random.default_rng(0).uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
    return model, path, x


@pytest.fixture(scope="module")
def classifier(source):
    return hub_classifier(source[1], num_classes=4, input_shape=(SIZE, SIZE, 3))


def test_classifier_layers_stages_and_features(source, classifier):
    model, _, x = source
    clf = classifier
    assert [layer.name for layer in clf.layers] == ["image", "stem_rescale", "stage4_hub", "head_pool",
                                                 "head_fc"]
    backbone = clf.get_layer("stage4_hub")
    assert isinstance(backbone, keras.layers.Layer) and isinstance(backbone, HubBackbone)
    assert wb.stage_layers(clf, "stage4") == [backbone]
    assert [layer.name for layer in wb.stage_layers(clf, "head")] == ["head_pool", "head_fc"]
    assert backbone.input_range == (0.0, 255.0)  # the workbench export records 0-255: no rescaling
    assert clf.get_layer("stem_rescale").scale == pytest.approx(1.0)
    expected = feature_extractor(model).predict(x, verbose=0)
    np.testing.assert_allclose(backbone(x).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(feature_extractor(clf).predict(x, verbose=0), expected, atol=1e-5)
    trainable = [v for v in model.trainable_weights if not v.path.startswith("head_fc")]
    assert len(backbone.trainable_weights) == len(trainable)
    assert len(clf.trainable_weights) == len(trainable) + 2
    assert len(backbone.weights) == len(feature_extractor(model).weights)


def test_one_training_step_updates_the_hub_variables(source):
    _, path, x = source
    y = np.arange(len(x)) % 3
    clf = hub_classifier(path, num_classes=3, input_shape=(SIZE, SIZE, 3))
    backbone = clf.get_layer("stage4_hub")
    clf.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    before = [v.numpy().copy() for v in backbone.weights]
    # Epoch 1 is one step; epoch 2's loss is that batch's loss after it (both in training mode).
    losses = clf.fit(x, y, batch_size=len(x), epochs=2, shuffle=False, verbose=0).history["loss"]
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, backbone.weights)]
    trainable = [v.trainable for v in backbone.weights]
    assert all(c for c, t in zip(changed, trainable) if t)  # every backbone weight trained
    assert any(c for c, t in zip(changed, trainable) if not t)  # BN statistics updated: training=True
    assert losses[1] < losses[0]
    # The weights are the SavedModel's own variables (wrapped, not copied).
    hub_vars = {id(v) for v in backbone._hub.variables}
    assert all(id(w.value) in hub_vars for w in backbone.weights)


def test_frozen_backbone_keeps_its_statistics(source, classifier):
    x = source[2]
    backbone = classifier.get_layer("stage4_hub")
    backbone.trainable = False
    try:
        assert [v.path for v in classifier.trainable_weights] == ["head_fc/kernel", "head_fc/bias"]
        before = [v.numpy().copy() for v in backbone.weights]
        classifier(x, training=True)
        assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, backbone.weights))
    finally:
        backbone.trainable = True


def test_keras_file_needs_unsafe_mode(source, classifier, tmp_path):
    x, clf = source[2], classifier
    clf.save(tmp_path / "m.keras")
    with pytest.raises(ValueError, match="safe_mode=False"):
        keras.saving.load_model(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=False)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), clf.predict(x, verbose=0), atol=1e-6)


def test_input_range_for_hub_convention_models(source):
    _, path, _ = source
    clf = hub_classifier(path, num_classes=2, input_shape=(SIZE, SIZE, 3), input_range=(-1, 1))
    rescale = clf.get_layer("stem_rescale")
    assert rescale.scale == pytest.approx(2 / 255) and rescale.offset == -1


class _PlainFeatureVector(tf.Module):
    """A minimal TF2 Hub-style model as others publish them: [0, 1] images, no `training` argument."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(tf.random.stateless_normal((3, 5), seed=(1, 2)), name="dense/kernel")

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        return tf.nn.relu(tf.reduce_mean(images, axis=[1, 2]) @ self.w)


def test_foreign_hub_model_uses_the_hub_convention(tmp_path):
    module = _PlainFeatureVector()
    tf.saved_model.save(module, str(tmp_path / "plain"))
    clf = hub_classifier(tmp_path / "plain", num_classes=2, input_shape=(32, 32, 3))
    assert clf.get_layer("stem_rescale").scale == pytest.approx(1 / 255)  # Hub images are [0, 1]
    backbone = clf.get_layer("stage4_hub")
    assert backbone.input_range is None and len(backbone.trainable_weights) == 1
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(backbone(x / 255).numpy(), module(x / 255).numpy(), atol=1e-6)
    clf.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    before = backbone.weights[0].numpy().copy()
    clf.fit(x, np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    assert not np.array_equal(before, backbone.weights[0].numpy())


@slow
def test_tf_keras_hub_keraslayer_fine_tunes_the_export(source, tmp_path):
    model, path, x = source
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "features.npy", feature_extractor(model).predict(x, verbose=0))
    script = textwrap.dedent(f"""
        import json, numpy as np, tf_keras
        from workbench.models.tfhub import import_tensorflow_hub
        hub = import_tensorflow_hub()
        x = np.load({str(tmp_path / "x.npy")!r})
        layer = hub.KerasLayer({path!r}, trainable=True, input_shape=({SIZE}, {SIZE}, 3))
        model = tf_keras.Sequential([layer, tf_keras.layers.Dense(3)])
        features = layer(x, training=False).numpy()
        print(json.dumps({{"trainable": len(layer.trainable_weights),
                           "model_trainable": len(model.trainable_weights),
                           "diff": float(np.abs(features - np.load({str(tmp_path / "features.npy")!r})).max())}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    trainable = [v for v in model.trainable_weights if not v.path.startswith("head_fc")]
    assert result["trainable"] == len(trainable)
    assert result["model_trainable"] == len(trainable) + 2
    assert result["diff"] < 1e-5


def test_bad_paths_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        hub_backbone(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.*SavedModel"):
        hub_backbone(tmp_path / "empty")
    (tmp_path / "weights.h5").write_bytes(b"not a saved model")
    with pytest.raises(ValueError, match=r"weights\.h5.*is a file"):
        hub_backbone(tmp_path / "weights.h5")


def test_unresolvable_handle_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(workbench.models.tfhub, "looks_offline", lambda hosts=(), timeout=5.0: True)
    start = time.time()
    with pytest.raises(HubModelUnavailableError) as info:
        hub_backbone(SEED_HANDLE)
    message = str(info.value)
    assert SEED_HANDLE in message and "no network" in message and "local" in message.lower()
    assert time.time() - start < 10


def test_recipe_variant_syntax():
    assert is_hub_variant("hub:/models/x") and is_hub_variant(" HUB:https://tfhub.dev/a/b/1")
    assert not is_hub_variant("regnety_200mf")
    assert hub_handle("hub:" + SEED_HANDLE) == SEED_HANDLE
    with pytest.raises(ValueError, match="handle or path"):
        hub_handle("hub:")


@slow
def test_hub_classifier_converts_to_tflite(source, classifier, tmp_path):
    x = source[2]
    result = export(classifier, tmp_path / "tflite", "tflite", sample_images=x, verbose=False)
    assert result["check"]["float32"]["max_abs_diff"] < 1e-4
    assert result["check"]["float32"]["top1_agreement"] == 1.0
