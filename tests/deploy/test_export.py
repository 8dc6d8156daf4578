"""Export formats: each reloads and predicts like the Keras model, on real sample photos."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import tiny_regnet
from workbench.models.contract import feature_extractor
from workbench.deploy.export import FORMATS, export, export_all
from workbench.deploy.tflite import tflite_predict
from workbench.data.sample import sample_dataset

SIZE = 64


def tiny_model(num_classes=3):
    return tiny_regnet(num_classes, size=SIZE)


def read_split(split, size=SIZE):
    """The sample dataset's photos of one split as (images 0-255, labels, class names)."""
    root = sample_dataset() / split
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(names):
        for f in sorted((root / name).glob("*.jpg")):
            images.append(np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)))
            labels.append(label)
    return np.stack(images).astype("float32"), np.array(labels), names


def fit_head(model, images, labels, steps=300, lr=0.5):
    """Fit only `head_fc` (softmax regression on the frozen backbone's features, in numpy):
    a cheap, meaningfully trained model."""
    backbone = feature_extractor(model)
    feats = np.concatenate([backbone(images[i:i + 128], training=False) for i in range(0, len(images), 128)])
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    z, onehot = (feats - mean) / std, np.eye(model.output_shape[-1])[labels]
    kernel, bias = np.zeros((z.shape[1], onehot.shape[1])), np.zeros(onehot.shape[1])
    for _ in range(steps):
        logits = z @ kernel + bias
        p = np.exp(logits - logits.max(1, keepdims=True))
        grad = (p / p.sum(1, keepdims=True) - onehot) / len(z)
        kernel -= lr * (z.T @ grad + 1e-3 * kernel)
        bias -= lr * grad.sum(0)
    # Fold the standardization into head_fc.
    model.get_layer("head_fc").set_weights([kernel / std[:, None], bias - (mean / std) @ kernel])
    return model


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    train_x, train_y, names = read_split("train")
    val_x, val_y, _ = read_split("val")
    model = fit_head(tiny_model(len(names)), train_x, train_y)
    return model, names, val_x, val_y


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, names, val_x, _ = trained
    out = tmp_path_factory.mktemp("run")
    return out, export_all(model, out, "keras, saved_model,hub,tflite", names, sample_images=val_x,
                           verbose=False)


def test_model_is_meaningful(trained):
    model, _, val_x, val_y = trained
    accuracy = np.mean(model.predict(val_x, verbose=0).argmax(-1) == val_y)
    assert accuracy > 0.6  # chance is 1/3: the agreement checks below are not on a constant model


def test_export_all_layout(exported):
    out, results = exported
    assert list(results) == ["keras", "saved_model", "hub", "tflite"]
    assert (out / "export" / "model.keras").is_file()
    for name in ("saved_model", "hub"):
        assert (out / "export" / name / "saved_model.pb").is_file()
    assert (out / "export" / "tflite" / "labels.txt").read_text().split() == ["brick", "grass", "gravel"]
    json.dumps(results)  # fit for metrics.json
    assert all(r["size_bytes"] > 0 for r in results.values())


def test_saved_model_runs_without_onednn(trained, exported):
    """Exports trace grouped convolutions in the chunked form, which TensorFlow's Eigen CPU kernels run too
    (they have no grouped Conv2D); this process trains on oneDNN's native grouped op."""
    model, _, val_x, _ = trained
    code = ("import sys, numpy as np, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
            "x = np.load(sys.argv[2]); print(m.signatures['serving_default'](images=tf.constant(x))"
            "['probabilities'].numpy().tolist())")
    np.save(exported[0] / "x.npy", val_x[:4])
    child = subprocess.run([sys.executable, "-c", code, exported[1]["saved_model"]["path"],
                            str(exported[0] / "x.npy")], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert child.returncode == 0, child.stderr[-2000:]
    got = np.array(json.loads(child.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, model.predict(val_x[:4], verbose=0), atol=1e-5)


def test_keras_roundtrip(trained, exported, tmp_path):
    model, _, val_x, _ = trained
    reloaded = keras.saving.load_model(exported[1]["keras"]["path"])
    np.testing.assert_allclose(reloaded.predict(val_x, verbose=0), model.predict(val_x, verbose=0),
                               atol=1e-6)
    assert export(model, tmp_path / "m.keras", "keras", verbose=False)["path"] == str(tmp_path / "m.keras")


def test_saved_model_serving_signatures(trained, exported):
    model, names, val_x, _ = trained
    loaded = tf.saved_model.load(exported[1]["saved_model"]["path"])
    assert {"serving_default", "serving_uint8"} <= set(loaded.signatures)
    expected = model.predict(val_x, verbose=0)
    out = loaded.signatures["serving_default"](images=tf.constant(val_x))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out["class_index"].numpy(), expected.argmax(-1))
    assert [s.decode() for s in out["class_name"].numpy()] == [names[i] for i in expected.argmax(-1)]

    as_uint8 = val_x[:8].astype(np.uint8)
    out = loaded.signatures["serving_uint8"](images=tf.constant(as_uint8))
    np.testing.assert_allclose(out["probabilities"].numpy(),
                               model.predict(as_uint8.astype("float32"), verbose=0), atol=1e-5)

    big = tf.image.resize(val_x[:4], (97, 130)).numpy()  # another size and aspect: resized inside
    out = loaded.signatures["serving_default"](images=tf.constant(big))
    resized = tf.image.resize(big, (SIZE, SIZE), antialias=True).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), model.predict(resized, verbose=0), atol=1e-5)


def test_tflite_float_and_quantized(trained, exported):
    model, _, val_x, _ = trained
    result = exported[1]["tflite"]
    files, check = result["files"], result["check"]
    assert files["dynamic_range"]["size_bytes"] < files["float32"]["size_bytes"]
    assert check["float32"]["max_abs_diff"] < 1e-4 and check["float32"]["top1_agreement"] == 1.0
    assert check["dynamic_range"]["top1_agreement"] >= 0.9
    assert check["float32"]["images"] == len(val_x)
    expected = model.predict(val_x, verbose=0)
    got = tflite_predict(files["float32"]["path"], val_x)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    quantized = tflite_predict(files["dynamic_range"]["path"], val_x)
    assert np.mean(quantized.argmax(-1) == expected.argmax(-1)) >= 0.9


def test_hub_format_is_a_feature_vector(trained, exported):
    model, _, val_x, _ = trained
    loaded = tf.saved_model.load(exported[1]["hub"]["path"])
    features = feature_extractor(model).predict(val_x[:8], verbose=0)
    np.testing.assert_allclose(loaded(tf.constant(val_x[:8])).numpy(), features, atol=1e-5)
    np.testing.assert_allclose(loaded(tf.constant(val_x[:8]), training=False).numpy(), features, atol=1e-5)
    assert loaded(tf.constant(val_x[:8]), training=True).shape == features.shape
    trainable = [v for v in model.trainable_weights if not v.path.startswith("head_fc")]
    assert len(loaded.trainable_variables) == len(trainable)
    assert len(loaded.variables) == len(feature_extractor(model).weights)
    assert list(loaded.regularization_losses) == []
    assert list(loaded.input_range.numpy()) == [0.0, 255.0]
    assert exported[1]["hub"]["feature_dim"] == features.shape[-1]


def test_unknown_format_is_rejected_before_writing(trained, tmp_path):
    model = trained[0]
    with pytest.raises(ValueError, match="keras, saved_model, hub, tflite, tflite_int8, onnx"):
        export(model, tmp_path / "x", "pb")
    with pytest.raises(ValueError, match="'bogus'"):
        export_all(model, tmp_path / "run", "keras,bogus")
    assert not (tmp_path / "run").exists()
    assert export_all(model, tmp_path / "none", "") == {}
    assert FORMATS == ("keras", "saved_model", "hub", "tflite", "tflite_int8", "onnx")


def test_class_names_must_match_outputs(trained, tmp_path):
    with pytest.raises(ValueError, match="2 names but the model outputs 3"):
        export(trained[0], tmp_path / "sm", "saved_model", ["a", "b"])
