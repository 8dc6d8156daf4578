"""wb.predict on real photos: bad files skipped, the training pipeline's numbers, every model kind, multi-label."""
import json
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import slow, tiny_regnet
from test_export import fit_head, read_split

import workbench as wb
from workbench.data.sample import sample_dataset
from workbench.deploy.onnx import onnx_predict

SIZE = 64


@pytest.fixture(scope="module")
def trained():
    """The tiny RegNetY with a fitted head (80% on the sample's validation photos), and its class names."""
    keras.utils.set_random_seed(0)
    train_x, train_y, names = read_split("train")
    return fit_head(tiny_regnet(len(names), size=SIZE), train_x, train_y), names


@pytest.fixture(scope="module")
def run(trained, tmp_path_factory):
    """A run's output folder as the recipes leave it: model.keras and metrics.json with the class names."""
    model, names = trained
    out = tmp_path_factory.mktemp("run")
    model.save(out / "model.keras")
    (out / "metrics.json").write_text(json.dumps({"class_names": names, "variant": "tiny"}))
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The sample's validation photos, some in a nested folder, plus a text file named .jpg and a truncated JPEG."""
    root = tmp_path_factory.mktemp("new") / "photos"
    shutil.copytree(sample_dataset() / "val", root)
    nested = root / "grass" / "more"
    nested.mkdir()
    for f in sorted((root / "grass").glob("*.jpg"))[:5]:
        f.rename(nested / f.name)
    (root / "notes.jpg").write_text("these are notes, not a photo")
    data = (root / "brick" / sorted(p.name for p in (root / "brick").iterdir())[0]).read_bytes()
    (root / "gravel" / "broken.jpg").write_bytes(data[: len(data) // 2])
    (root / "readme.txt").write_text("not an image extension: not looked at")
    return root


def truth(files):
    """The class of each sample photo: the class folder it sits in (nested folders under it included)."""
    return [next(p for p in f.split("/")[::-1] if p in ("brick", "grass", "gravel")) for f in files]


def test_a_folder_with_unreadable_and_nested_files(run, trained, photos):
    preds = wb.predict(run / "model.keras", photos)
    skipped = dict(preds.skipped)
    assert set(skipped) == {str(photos / "notes.jpg"), str(photos / "gravel" / "broken.jpg")}
    assert "not an image" in skipped[str(photos / "notes.jpg")]
    assert len(preds) == 60 and sum("/grass/more/" in f for f in preds.files) == 5
    assert preds.class_names == ["brick", "grass", "gravel"]  # from the run's metrics.json
    # The same numbers as the training pipeline's own evaluation of the validation folder.
    model, _ = trained
    data = wb.load_folder(sample_dataset(), image_size=SIZE, batch_size=32, verbose=False)
    y_true, y_prob = wb.predict_dataset(model, data.val)
    order = np.argsort([f.split("/")[-1] for f in preds.files])  # the file names are unique
    np.testing.assert_allclose(preds.probabilities[order], y_prob, atol=1e-6)
    accuracy = np.mean(np.array(preds.labels) == np.array(truth(preds.files)))
    assert accuracy == pytest.approx(np.mean(y_prob.argmax(-1) == y_true)) and accuracy > 0.6


def test_table_csv_and_gallery(trained, photos, tmp_path):
    model, names = trained
    files = [photos / "notes.jpg", *sorted((photos / "brick").glob("*.jpg"))[:4]]
    preds = wb.predict(model, files, top_k=2, batch_size=3, class_names=names)
    frame = preds.frame
    assert list(frame.columns) == ["file", "label", "probability", "top1", "top1_probability", "top2",
                                   "top2_probability"]
    assert len(frame) == 4 and [f for f, _ in preds.skipped] == [str(photos / "notes.jpg")]
    assert (frame.top1 == frame.label).all() and (frame.top1_probability >= frame.top2_probability).all()
    np.testing.assert_allclose(frame.probability, preds.probabilities.max(1))
    back = pd.read_csv(preds.to_csv(tmp_path / "p.csv"))
    assert back.file.tolist() == preds.files and np.allclose(back.top2_probability, frame.top2_probability)
    maps = np.linspace(0, 1, 4 * 8 * 8).reshape(4, 8, 8)
    figure = preds.plot(n=3, path=tmp_path / "gallery.png", heatmaps=maps)
    assert (tmp_path / "gallery.png").stat().st_size > 10_000
    plain = preds.plot(n=3).axes[0].images[0].get_array()
    drawn = figure.axes[0].images[0].get_array()
    assert figure.axes[0].get_title().startswith(preds.labels[0])
    np.testing.assert_array_equal(drawn, wb.overlay_heatmap(plain, maps[0]))  # the heatmap is drawn over it
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        preds.plot(heatmaps=maps * 255)
    with pytest.raises(ValueError, match="one 2-D map per image"):
        preds.plot(heatmaps=maps[:2])


def test_arrays_are_fed_as_model_predict_or_cropped_as_files(trained, photos):
    model, names = trained
    files = sorted((photos / "brick").glob("*.jpg"))[:6]
    decoded = np.stack([tf.io.decode_jpeg(tf.io.read_file(str(f)), channels=3).numpy() for f in files])
    assert decoded.shape[1:] == (128, 128, 3)
    from_files = wb.predict(model, files, class_names=names)
    from_array = wb.predict(model, decoded, class_names=names)  # not the model's size: resized and cropped
    np.testing.assert_allclose(from_array.probabilities, from_files.probabilities, atol=1e-6)
    ready = from_files.images(6)  # the crops the model saw, at its input size: fed as they are
    np.testing.assert_array_equal(wb.predict(model, ready, class_names=names).probabilities,
                                  from_files.probabilities)
    assert from_array.files[0] == "images[0]"


def test_onnx_export_matches_keras_and_predicts(trained, photos, tmp_path):
    model, names = trained
    val_x, _, _ = read_split("val")
    result = wb.export(model, tmp_path / "onnx", "onnx", names, sample_images=val_x, verbose=False)
    assert result["path"] == str(tmp_path / "onnx" / "model.onnx")
    assert (tmp_path / "onnx" / "labels.txt").read_text().split() == names
    expected = model.predict(val_x, verbose=0)
    got = onnx_predict(result["path"], val_x)
    diff = float(np.abs(got - expected).max())
    print(f"\nonnx vs keras on {len(val_x)} sample photos: max |p - p_keras| = {diff:.2e}")
    assert diff < 1e-4 and result["check"]["onnx"]["max_abs_diff"] < 1e-4
    preds = wb.predict(result["path"], photos)
    keras_preds = wb.predict(model, photos, class_names=names)
    assert preds.class_names == names and preds.labels == keras_preds.labels
    np.testing.assert_allclose(preds.probabilities, keras_preds.probabilities, atol=1e-4)


def small_convnet(outputs=3, activation="softmax", size=32):
    """A plain-convolution classifier on 0-255 images (what full-integer TFLite quantizes without trouble)."""
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((size, size, 3)), keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"), keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(outputs, activation=activation)])


@pytest.fixture(scope="module")
def convnet():
    """`small_convnet` trained a few epochs on the sample's training photos at 32 px, and its training images."""
    model = small_convnet()
    model.compile("adam", "sparse_categorical_crossentropy")
    train_x, train_y, names = read_split("train", size=32)
    model.fit(train_x, train_y, epochs=3, batch_size=32, verbose=0)
    return model, train_x, names


@pytest.mark.parametrize("io_type", [tf.uint8, tf.int8])
def test_full_integer_tflite(io_type, convnet, photos, tmp_path):
    """A full-integer model (int8 weights and activations, int8 or uint8 input and output) through wb.predict."""
    model, train_x, names = convnet
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in train_x[::4])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = io_type
    (tmp_path / "model_int8.tflite").write_bytes(converter.convert())
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "model_int8.tflite"))
    assert interpreter.get_input_details()[0]["dtype"] == io_type.as_numpy_dtype  # really quantized input
    preds = wb.predict(tmp_path / "model_int8.tflite", photos)
    reference = wb.predict(model, photos, class_names=names)
    assert preds.class_names == names and len(preds) == 60
    assert np.abs(preds.probabilities - reference.probabilities).max() < 0.05  # a few quantization steps
    assert np.mean(np.array(preds.labels) == np.array(reference.labels)) >= 0.9


@pytest.mark.parametrize("where", ["thresholds.json", "metrics.json"])
def test_multi_label(where, photos, tmp_path):
    """Label sets at the run's thresholds, with sigmoid probabilities (a sigmoid head, or logits)."""
    names = ["brick", "grass", "gravel"]
    model = small_convnet(activation="sigmoid" if where == "thresholds.json" else None)
    model.save(tmp_path / "model.keras")
    files = sorted(photos.rglob("*.jpg"))[:24]
    crops = wb.predict(model, files, class_names=names).images(24)
    raw = model.predict(crops, verbose=0)
    expected = raw if where == "thresholds.json" else 1 / (1 + np.exp(-raw))
    thresholds = dict(zip(names, np.median(expected, axis=0).tolist()))
    if where == "thresholds.json":
        (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
        (tmp_path / "thresholds.json").write_text(json.dumps(thresholds))
    else:
        (tmp_path / "metrics.json").write_text(json.dumps(
            {"task": "multi_label", "class_names": names, "thresholds": thresholds}))
    preds = wb.predict(tmp_path / "model.keras", files)
    assert preds.multi_label and preds.thresholds == pytest.approx(thresholds)
    np.testing.assert_allclose(preds.probabilities, expected, atol=1e-6)
    sets = [[c for c, p in zip(names, row) if p >= thresholds[c]] for row in expected]
    assert preds.label_sets == sets and len({len(s) for s in sets}) > 1  # sets of different sizes
    assert preds.frame["labels"].tolist() == [";".join(s) for s in sets]


def test_bf16_prediction_folds_batchnorm_and_agrees_with_float32(run, photos, tmp_path):
    exact = wb.predict(run / "model.keras", photos)
    bf16 = wb.predict(run / "model.keras", photos, precision="mixed_bfloat16")
    assert np.abs(bf16.probabilities - exact.probabilities).mean() < 0.03  # bf16 itself: 0.017 unfolded too
    assert np.mean(np.array(bf16.labels) == np.array(exact.labels)) >= 0.95
    (tmp_path / "model.onnx").write_bytes(b"\0")
    with pytest.raises(ValueError, match="precision='mixed_bfloat16' applies to Keras models; a .onnx model runs"):
        wb.predict(tmp_path / "model.onnx", photos, precision="mixed_bfloat16")


def test_model_paths_that_are_not_workbench_outputs(run, photos, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"not a workbench model \(unknown extension '.txt'\); expected a workbench "
                                         r"model: a Keras model file \(model.keras\)"):
        wb.predict(tmp_path / "notes.txt", photos)
    with pytest.raises(ValueError, match="is a folder with no saved_model.pb; expected"):
        wb.predict(tmp_path, photos)
    with pytest.raises(ValueError, match="model.keras inside: pass that file"):
        wb.predict(run, photos)
    with pytest.raises(FileNotFoundError, match="does not exist: expected a workbench model"):
        wb.predict(tmp_path / "missing.keras", photos)
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "saved_model.pb").write_bytes(b"\0" * 64)
    for name in ("damaged.keras", "damaged.tflite", "damaged.onnx", "damaged"):
        if name != "damaged":
            (tmp_path / name).write_bytes(b"\0" * 64)
        with pytest.raises(ValueError, match=rf"Could not read '.*{name}' as a \S+ model \(.+\); expected"):
            wb.predict(tmp_path / name, photos)


def test_bad_images(trained, tmp_path):
    model, names = trained
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"Folder '.*empty' has no image files \(extensions .jpg"):
        wb.predict(model, empty, class_names=names)
    (empty / "a.jpg").write_text("text")
    (empty / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match=r"None of the 2 image file\(s\) could be read \(.*a.jpg: not an image"):
        wb.predict(model, empty, class_names=names)
    with pytest.raises(FileNotFoundError, match="do not exist: pass a folder"):
        wb.predict(model, tmp_path / "nowhere", class_names=names)
    with pytest.raises(ValueError, match=r"shaped \(images, height, width, 3\)"):
        wb.predict(model, np.zeros((4, 64, 64)), class_names=names)
    with pytest.raises(ValueError, match="2 class names .* but the model outputs 3 classes"):
        wb.predict(model, np.zeros((1, 64, 64, 3)), class_names=["a", "b"])
    with pytest.warns(UserWarning, match="No class names found for an in-memory model"):
        assert wb.predict(model, np.zeros((1, 64, 64, 3))).class_names == ["0", "1", "2"]


@slow
def test_every_export_through_predict(trained, photos, tmp_path):
    """SavedModel, float32 and dynamic-range TFLite, ONNX and .keras exports of a run, read back by wb.predict."""
    model, names = trained
    val_x, _, _ = read_split("val")
    wb.export_all(model, tmp_path, "keras,saved_model,tflite,onnx", names, sample_images=val_x, verbose=False)
    reference = wb.predict(model, photos, class_names=names)
    exported = {"keras": "model.keras", "saved_model": "saved_model",
                "tflite": "tflite/model_float32.tflite", "onnx": "onnx/model.onnx"}
    for kind, path in exported.items():
        preds = wb.predict(tmp_path / "export" / path, photos)
        assert preds.class_names == names, kind  # from labels.txt beside the export
        np.testing.assert_allclose(preds.probabilities, reference.probabilities, atol=1e-4, err_msg=kind)
    dynamic = wb.predict(tmp_path / "export" / "tflite" / "model_dynamic_range.tflite", photos)
    assert np.mean(np.array(dynamic.labels) == np.array(reference.labels)) >= 0.9
