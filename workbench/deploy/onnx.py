"""ONNX export: Keras 3's exporter (`model.export(format="onnx")`, through tf2onnx), checked in onnxruntime.

    wb.export(model, "out/onnx", "onnx", class_names)   # out/onnx/model.onnx, out/onnx/labels.txt

The file takes float32 0-255 images `[batch, height, width, 3]` of the model's
input size (224 when the model takes any size), like the TFLite export, and
outputs `probabilities` (the softmax of a model that outputs logits is part of
the graph). Grouped convolutions are traced as one grouped op, which ONNX's
`Conv` (its `group` attribute) runs natively.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from workbench.models.contract import probabilities
from workbench.models.layers import traced_grouped_convs

INPUT_NAME = "images"


def probability_model(model: keras.Model) -> keras.Model:
    """`model` with its outputs as probabilities (shares its weights; `model` itself when it has them)."""
    outputs = model.outputs[0]
    wrapped = probabilities(model, outputs)
    if wrapped is outputs:
        return model
    return keras.Model(model.inputs, wrapped, name=f"{model.name}_probabilities")


def export_onnx(model: keras.Model, path: Path, class_names, images, size: tuple[int, int]) -> dict:
    """Write `path` (a folder: `model.onnx` and `labels.txt` inside; or a `.onnx` file and
    `<stem>_labels.txt` beside it) and compare it with the Keras model on `images` (0-255, of `size`)."""
    if path.suffix == ".onnx":
        file, labels = path, path.with_name(path.stem + "_labels.txt")
    else:
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"Cannot export to {path}: it is a file, expected a folder or a .onnx path.")
        file, labels = path / "model.onnx", path / "labels.txt"
    write_onnx(model, file, size)
    if class_names:
        labels.write_text("\n".join(class_names) + "\n")
    expected = np.asarray(probabilities(model, model.predict(images, batch_size=16, verbose=0)))
    got = onnx_predict(file, images)
    check = {"images": int(len(images)), "max_abs_diff": float(np.max(np.abs(got - expected))),
             "top1_agreement": float(np.mean(got.argmax(-1) == expected.argmax(-1)))}
    return {"path": str(file), "size_bytes": file.stat().st_size, "check": {"onnx": check}}


def write_onnx(model: keras.Model, file: Path, size: tuple[int, int]) -> Path:
    """Write `model` (as probabilities) to the .onnx `file` for images of `size` (height, width)."""
    try:
        import tf2onnx  # noqa: F401 - Keras' exporter imports it; a missing install is said here
    except ImportError as err:
        raise ImportError("The ONNX export needs tf2onnx, onnx and onnxruntime: "
                          "pip install tf2onnx onnx onnxruntime") from err
    file.parent.mkdir(parents=True, exist_ok=True)
    spec = [tf.TensorSpec([None, *size, 3], tf.float32, name=INPUT_NAME)]
    with traced_grouped_convs("native"):  # ONNX Conv runs groups itself: no chunked copies
        probability_model(model).export(str(file), format="onnx", verbose=False, input_signature=spec)
    return file


def onnx_session(file):
    """An onnxruntime CPU session on the .onnx `file`."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("Running an .onnx model needs onnxruntime: pip install onnxruntime") from err
    return onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])


def onnx_predict(file, images, batch_size: int = 32) -> np.ndarray:
    """The outputs of the .onnx `file` on `images` (N, H, W, 3), in batches of `batch_size`."""
    session = onnx_session(file)
    name = session.get_inputs()[0].name
    images = np.asarray(images, np.float32)
    return np.concatenate([session.run(None, {name: images[i:i + batch_size]})[0]
                           for i in range(0, len(images), batch_size)])
