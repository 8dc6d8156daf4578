"""What `wb.predict` runs: a Keras model, or a file the workbench wrote, opened in its own runtime.

`open_model(model)` takes a `keras.Model` or a path (`model.keras`, an exported
SavedModel folder, a `.tflite` of any kind, an `.onnx`) and returns a `Runtime`:
the input size the model was made for, and `outputs(dataset)`, the outputs on a
`tf.data.Dataset` of float32 0-255 image batches. Keras models run through
`model.predict` (tf.data, batched), SavedModels through their serving
signature batch by batch, TFLite through one interpreter resized to the batch,
with int8 / uint8 tensors quantized and dequantized by their own scale and zero
point, and ONNX through one onnxruntime session.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from workbench.data.pipeline import error_reason
from workbench.deploy import tflite
from workbench.models.contract import input_size
from workbench.deploy.onnx import onnx_session
from workbench.models.contract import outputs_logits
from workbench.models.fold import fold_batchnorm
from workbench.train.precision import set_precision
from workbench.utils import checks

EXPECTED = ("a workbench model: a Keras model file (model.keras), an exported SavedModel folder "
            "(with saved_model.pb), a .tflite or an .onnx file, as the recipes and wb.export write them")


class NotAWorkbenchModel(ValueError):
    """A model path that is not (or no longer) something the workbench writes."""


@dataclass
class Runtime:
    """A model ready to run: `outputs(batches)` -> array (N, classes)."""

    path: Path | None              # where it was read from (None for an in-memory keras.Model)
    size: tuple[int, int]          # (height, width) of the images it is fed
    logits: bool                   # True when outputs are logits (softmax / sigmoid still to apply)
    outputs: Callable[[tf.data.Dataset], np.ndarray]


def open_model(model, precision: str = "float32") -> Runtime:
    """A `Runtime` for a `keras.Model` or a path to a workbench model file or folder.

    precision: "float32", or "mixed_bfloat16" for a Keras model (a copy with BatchNorm folded into the
    convolutions computes in bf16: `workbench.models.fold`).
    """
    checks.one_of("precision", precision, ("float32", "mixed_bfloat16"))
    if isinstance(model, keras.Model):
        return _keras_runtime(model, None, precision)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a keras.Model or a path to {EXPECTED}; got {type(model).__name__}.")
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Model '{path}' does not exist: expected {EXPECTED}.")
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        found = "model.keras inside: pass that file" if (path / "model.keras").is_file() else "no saved_model.pb"
        raise NotAWorkbenchModel(f"'{path}' is a folder with {found}; expected {EXPECTED}.")
    kind = "SavedModel" if path.is_dir() else path.suffix.lower()
    opener = {"SavedModel": _saved_model_runtime, ".tflite": _tflite_runtime, ".onnx": _onnx_runtime,
              ".keras": lambda p: _keras_runtime(keras.saving.load_model(p, compile=False), p, precision)}.get(kind)
    if opener is None:
        raise NotAWorkbenchModel(f"'{path}' is not a workbench model (unknown extension '{path.suffix}'); "
                                 f"expected {EXPECTED}.")
    if precision != "float32" and kind != ".keras":
        raise ValueError(f"precision={precision!r} applies to Keras models; a {kind} model runs as it was "
                         "exported: leave precision at 'float32'.")
    try:
        return opener(path)
    except (ImportError, NotAWorkbenchModel):
        raise
    except Exception as err:  # noqa: BLE001 - each runtime has its own errors for a damaged file
        raise NotAWorkbenchModel(f"Could not read '{path}' as a {kind} model ({error_reason(err)}); "
                                 f"expected {EXPECTED}.") from err


def _batches_to_numpy(dataset: tf.data.Dataset, run) -> np.ndarray:
    return np.concatenate([run(np.asarray(x, np.float32)) for x in dataset.as_numpy_iterator()])


def _keras_runtime(model: keras.Model, path, precision: str = "float32") -> Runtime:
    if precision != "float32":
        model = fold_batchnorm(model)
        set_precision(model, precision)
    return Runtime(path, input_size(model), outputs_logits(model),
                   lambda batches: np.asarray(model.predict(batches, verbose=0)))


def _saved_model_runtime(path: Path) -> Runtime:
    loaded = tf.saved_model.load(str(path))
    if "serving_default" not in loaded.signatures:
        raise NotAWorkbenchModel(f"SavedModel '{path}' has no serving_default signature; expected {EXPECTED}.")
    serve = loaded.signatures["serving_default"]

    def run(images):
        return serve(images=tf.constant(images))["probabilities"].numpy()

    return Runtime(path, _resize_target(serve), False,
                   lambda batches: _batches_to_numpy(batches, run))


def _resize_target(function) -> tuple[int, int]:
    """The (height, width) a workbench SavedModel signature resizes its images to (the model's input size)."""
    for f in function.graph.as_graph_def().library.function:
        nodes = {n.name: n for n in f.node_def}
        for node in f.node_def:
            if node.op in ("ScaleAndTranslate", "ResizeBilinear"):
                size = nodes.get(node.input[1].split(":")[0])
                if size is not None and size.op == "Const":
                    h, w = tf.make_ndarray(size.attr["value"].tensor)
                    return int(h), int(w)
    raise NotAWorkbenchModel("This SavedModel's serving signature does not resize its images to a fixed size, as "
                     f"wb.export(..., 'saved_model') writes it; expected {EXPECTED}.")


def _tflite_runtime(path: Path) -> Runtime:
    interpreter = tflite.interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape = [None]

    def run(images):
        if images.shape != shape[0]:
            interpreter.resize_tensor_input(inp["index"], images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(inp["index"], tflite.quantize(images, inp))
        interpreter.invoke()
        return tflite.dequantize(interpreter.get_tensor(out["index"]), out)

    h, w = (int(d) for d in inp["shape"][1:3])
    return Runtime(path, (h, w), False, lambda batches: _batches_to_numpy(batches, run))


def _onnx_runtime(path: Path) -> Runtime:
    session = onnx_session(path)
    inp = session.get_inputs()[0]
    h, w = inp.shape[1:3]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise NotAWorkbenchModel(f"'{path}' takes images of any size ({inp.shape}); a workbench .onnx has a fixed "
                         f"input size. Expected {EXPECTED}.")
    return Runtime(path, (h, w), False,
                   lambda batches: _batches_to_numpy(batches, lambda x: session.run(None, {inp.name: x})[0]))
