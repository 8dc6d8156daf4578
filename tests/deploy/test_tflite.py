"""TFLite int8 export: full-integer, grouped convolutions lowered, accuracy table on the run's validation photos."""
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import workbench as wb
from conftest import slow, tiny_regnet
from workbench.deploy import tflite
from workbench.deploy.export import FORMATS, export
from workbench.models.layers import GroupConv2D, set_grouped_conv_implementation
from workbench.recipe.outputs import save_outputs

SIZE = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny RegNetY (grouped convs, SE) fine-tuned on the sample photos, its outputs saved as a recipe
    does with export="tflite_int8": (data, result, metrics)."""
    data = wb.load_folder(wb.sample_dataset(), image_size=SIZE, batch_size=32, seed=0, verbose=False)
    result = wb.finetune(tiny_regnet(data.num_classes, size=SIZE), data, epochs=4, lr=5e-3, pretrained=False,
                         verbose=0)
    out = tmp_path_factory.mktemp("run")
    metrics = save_outputs(result, data, out, "tiny_regnety", "tflite_int8")
    return data, result, metrics


def validation_arrays(data):
    batches = list(data.val)
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def test_int8_file_is_full_integer(run):
    _, _, metrics = run
    path = metrics["exports"]["tflite_int8"]["path"]
    interpreter = tflite.interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and inp["quantization"] == (1.0, 0)  # raw pixels go in unchanged
    assert out["dtype"] == np.uint8
    kinds = [t["dtype"] for t in interpreter.get_tensor_details()]
    assert set(kinds) == {np.uint8, np.int8, np.int32}  # no float tensor: int32 biases and shapes
    assert kinds.count(np.uint8) == 2  # input and output; every activation and weight is int8
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert {"CONV_2D", "LOGISTIC", "MUL", "MEAN", "FULLY_CONNECTED", "SOFTMAX"} <= ops  # SE, head: all int8
    assert "DEQUANTIZE" not in ops


def test_int8_agrees_with_keras_on_real_photos(run):
    data, result, metrics = run
    images, labels = validation_arrays(data)
    expected = result.model.predict(images, verbose=0)
    got = tflite.tflite_predict(metrics["exports"]["tflite_int8"]["path"], images)
    agreement = np.mean(got.argmax(-1) == expected.argmax(-1))
    assert np.mean(expected.argmax(-1) == labels) > 0.55  # chance is 1/3: agreement below means something
    assert agreement >= 0.9, agreement  # measured 0.967: 2 of 60 photos flip
    assert np.abs(got - expected).mean() < 0.06  # measured 0.035
    raw = tflite.interpreter(metrics["exports"]["tflite_int8"]["path"])  # the uint8 pixels as they are
    raw.resize_tensor_input(0, (4, SIZE, SIZE, 3))
    raw.allocate_tensors()
    raw.set_tensor(raw.get_input_details()[0]["index"], np.round(images[:4]).astype(np.uint8))
    raw.invoke()
    probs = raw.get_tensor(raw.get_output_details()[0]["index"]) / 256
    np.testing.assert_allclose(probs, got[:4], atol=1 / 256)


def test_accuracy_table_in_metrics_and_report(run):
    data, result, metrics = run
    saved = json.loads((Path(metrics["output_dir"]) / "metrics.json").read_text())
    table = saved["exports"]["tflite_int8"]["accuracy"]
    rows = {r["format"]: r for r in table["rows"]}
    assert list(rows) == ["keras", "float32", "dynamic_range", "int8"]
    images, labels = validation_arrays(data)
    assert table["images"] == len(labels) == 60
    keras_top1 = np.mean(result.model.predict(images, verbose=0).argmax(-1) == labels)
    assert rows["keras"]["top1"] == pytest.approx(keras_top1)
    assert rows["float32"]["top1"] == pytest.approx(keras_top1) and rows["float32"]["top1_agreement"] == 1.0
    assert abs(rows["int8"]["top1"] - keras_top1) <= 0.1  # measured 0.817 -> 0.783, 2 photos of 60
    assert rows["int8"]["size_bytes"] < 0.6 * rows["float32"]["size_bytes"]  # measured 0.47 (tiny: biases weigh)
    assert all(rows[k]["latency_ms"] > 0 for k in ("float32", "dynamic_range", "int8"))
    text = (Path(saved["exports"]["tflite_int8"]["path"]).parent / "model_int8_accuracy.txt").read_text()
    assert text.splitlines()[4].split()[:2] == ["int8", f"{rows['int8']['top1']:.3f}"]
    assert saved["exports"]["tflite_int8"]["calibration_images"] == 240  # every training photo (< 300)


def test_export_report_prints_the_table(run, capsys):
    from workbench.deploy.export import _report
    result = run[2]["exports"]["tflite_int8"]
    _report(result)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Exported tflite_int8 to ") and lines[0].endswith("model_int8.tflite (0.4 MB)")
    table = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert list(table) == ["keras", "float32", "dynamic_range", "int8"]
    for row in result["accuracy"]["rows"]:
        assert table[row["format"]][:2] == [f"{row['top1']:.3f}", f"{row['top1_agreement']:.3f}"]


def test_grouped_convolutions_are_lowered(run):
    """No grouped CONV_2D reaches the flatbuffer; traced natively, the same model has them."""
    _, result, metrics = run
    grouped_layers = [l for l in result.model.layers if isinstance(l, GroupConv2D) and l.groups > 1]
    assert grouped_layers
    assert tflite.grouped_convs(metrics["exports"]["tflite_int8"]["path"]) == []
    set_grouped_conv_implementation(result.model, "native")
    try:
        native = tflite.convert(tflite.converter(result.model, "float32"))
    finally:
        set_grouped_conv_implementation(result.model, "auto")
    assert len(tflite.grouped_convs(native)) == len(grouped_layers)


def test_int8_needs_calibration_images(run, tmp_path):
    assert "tflite_int8" in FORMATS
    with pytest.raises(ValueError, match="calibration images"):
        export(run[1].model, tmp_path / "int8", "tflite_int8", verbose=False)
    assert not (tmp_path / "int8").exists()


def test_calibration_draws_from_every_class():
    """Training data in class order: the calibration sample still holds every class (reservoir sampling)."""
    images = np.repeat(np.arange(10, dtype=np.float32), 100)[:, None, None, None] * np.ones((1, 4, 4, 3))
    ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(1000))).batch(32)
    picked = tflite.representative_images(ds, (4, 4), 50)
    assert picked.shape == (50, 4, 4, 3)
    assert set(picked[:, 0, 0, 0]) == set(range(10))
    again = tflite.representative_images(images, (4, 4), 50)
    assert len(set(again[:, 0, 0, 0])) == 10


def test_float_export_reports_accuracy_too(run, tmp_path):
    data, result, _ = run
    images, labels = validation_arrays(data)
    out = export(result.model, tmp_path / "tflite", "tflite", data.class_names, verbose=False,
                 validation=(images, labels))
    rows = {r["format"]: r for r in out["accuracy"]["rows"]}
    assert list(rows) == ["keras", "float32", "dynamic_range"]
    assert rows["float32"]["top1"] == rows["keras"]["top1"] == pytest.approx(
        np.mean(result.model.predict(images, verbose=0).argmax(-1) == labels))
    assert out["io"]["input"] == "float32" and (tmp_path / "tflite" / "model_float32_accuracy.txt").is_file()


@slow
def test_regnety_200mf_converts_with_every_grouped_conv_lowered():
    """RegNetY-200MF in float32 and int8: no grouped conv left for a reference kernel. Their latencies are a
    benchmark's figures, not a test's (`python -m workbench.bench.int8 --lowering`, docs/int8.md)."""
    model = wb.regnet("regnety_200mf", num_classes=3, input_shape=(128, 128, 3))
    calibration = tflite.representative_images(read_photos(128), (128, 128), 20)
    files = {kind: tflite.convert(tflite.converter(model, kind, calibration)) for kind in ("float32", "int8")}
    assert all(tflite.grouped_convs(content) == [] for content in files.values())
    assert tflite.io_types(files["int8"])["input"] == "uint8"
    probs = tflite.tflite_predict(files["int8"], calibration[:4])
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1, atol=0.05)


def read_photos(size):
    data = wb.load_folder(wb.sample_dataset(), image_size=size, batch_size=32, seed=0, verbose=False)
    return np.concatenate([x for x, _ in data.train_plain])
