"""TFLite exports on raw 0-255 images: float32, dynamic-range and full-integer int8.

- "tflite": `model_float32.tflite` and `model_dynamic_range.tflite` (int8
  weights, float activations). Input: float32 0-255 images of the model's
  input size; output: float32 probabilities.
- "tflite_int8": `model_int8.tflite`, int8 weights (per channel) and int8
  activations, calibrated on `CALIBRATION_IMAGES` of the run's training images
  (the training pipeline without augmentation, drawn at random). Input **uint8**:
  the raw RGB pixels as they are (quantization scale 1, zero point 0: the
  calibration pins the input range to [0, 255]); output **uint8** probabilities
  (scale 1/256, zero point 0), as the Edge TPU, NNAPI and Arm NPU toolchains
  take. Every op is an int8 builtin (`TFLITE_BUILTINS_INT8`, no float fallback).

Grouped convolutions are lowered to plain CONV_2D ops, one per group between a
SPLIT and a CONCATENATION (`lowered_grouped_convs`): NPU compilers and TFLite's
builtin kernels have no fast grouped CONV_2D (TensorFlow's converter used to fail
on one in full-integer mode, tensorflow/tensorflow#61760). The forms measured
(`python -m workbench.bench.int8 --lowering`, docs/int8.md; RegNetY-200MF, 128 px,
one image, one thread, ms, XNNPACK / builtin kernels): per group 2.1 / 3.3 float32,
1.1 / 2.5 int8; chunks of 16 channels (block-diagonal kernels) 1.9 / 3.3 float32,
refused in int8 (the masked kernel stays an op output, quantized as an activation);
one block-diagonal conv 13.7 / 13.5 float32, refused in int8; the native grouped op
1.4 / 5.3 float32, 0.6 / 6.4 int8 (XNNPACK runs it, the builtin kernels only on
their reference path).

The int8 defaults are the measured ones (docs/int8.md): per-channel weights,
int8 activations, 300 calibration images, every op quantized. RegNetY's
squeeze-excitation (ReLU, sigmoid; no SiLU in RegNetX/Y) cost no accuracy worth
keeping in float, and 16x8 activations run 14-20x slower than int8 (TFLite has no
optimized int16 kernels). With `validation` (batches of images and labels) each export also measures,
on those images, the top-1 of the Keras model and of each .tflite, with its
size and single-image latency in the interpreter (`accuracy_table`).
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from workbench.models.contract import input_size, probabilities
from workbench.models.layers import GroupConv2D, portable_graphs

FILES = {"float32": "model_float32.tflite", "dynamic_range": "model_dynamic_range.tflite",
         "int8": "model_int8.tflite"}
CALIBRATION_IMAGES = 300
# Groups per dense CONV_2D of a lowered grouped convolution: 1 = split, one conv per group, concat.
GROUPS_PER_CONV = 1


@contextlib.contextmanager
def lowered_grouped_convs(model: keras.Model, groups_per_conv=GROUPS_PER_CONV):
    """Trace every GroupConv2D of `model` as dense convolutions of `groups_per_conv` groups each
    (None: the training default, about 16 input channels per conv; a large number: one block-diagonal conv)."""
    layers = [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, GroupConv2D)]
    saved = [layer.groups_per_conv for layer in layers]
    for layer in layers:
        layer.groups_per_conv = groups_per_conv
    try:
        with portable_graphs():
            yield
    finally:
        for layer, value in zip(layers, saved):
            layer.groups_per_conv = value


def converter(model: keras.Model, kind: str = "float32", calibration=None, groups_per_conv=GROUPS_PER_CONV,
              activations16: bool = False, per_channel: bool = True):
    """A TFLiteConverter for `model` on 0-255 images: `kind` "float32", "dynamic_range" or "int8".

    int8 needs `calibration`, an array of 0-255 images (`representative_images`);
    `activations16` quantizes activations to int16 instead (16x8, int16 input and output);
    `per_channel=False` quantizes each weight tensor with one scale. Grouped convolutions are
    traced as `lowered_grouped_convs(model, groups_per_conv)`.
    """
    if kind not in FILES:
        raise ValueError(f"Unknown TFLite kind {kind!r}: {', '.join(FILES)}.")
    h, w = input_size(model)

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="images")], autograph=False)
    def infer(images):
        return {"probabilities": probabilities(model, model(images, training=False))}

    with lowered_grouped_convs(model, groups_per_conv):
        function = infer.get_concrete_function()
    # The converter freezes the variables it finds on this object; a Keras 3 model does not
    # expose its tf.Variables as trackable children, so list them explicitly.
    root = tf.__internal__.tracking.AutoTrackable()
    root.variables = [v.value for v in model.weights]
    root.infer = infer
    conv = tf.lite.TFLiteConverter.from_concrete_functions([function], root)
    if kind != "float32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "int8":
        if calibration is None:
            raise ValueError("int8 export needs calibration images: pass the run's training data "
                             "(a tf.data.Dataset of (images, labels) or an array of 0-255 images).")
        conv.representative_dataset = _representative(calibration)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
                                          if activations16 else tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = tf.int16 if activations16 else tf.uint8
        conv.inference_input_type = conv.inference_output_type = io
        conv._experimental_disable_per_channel = not per_channel
    return conv


def _representative(images):
    """The converter's calibration generator: one image at a time, the input range pinned to [0, 255]."""
    images = np.array(images, np.float32)  # a copy
    # One pixel at 0 and one at 255 make the calibrated input range exactly [0, 255]: uint8 scale 1,
    # zero point 0, so raw pixels go in unchanged (two pixels of one image barely move other ranges).
    images[0, 0, 0, :], images[0, 0, 1, :] = 0.0, 255.0

    def generate():
        for image in images:
            yield [image[None]]
    return generate


def convert(conv, kind: str = "") -> bytes:
    try:
        return conv.convert()
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(f"TFLite conversion ({kind}) failed: {err}") from err


def representative_images(data, size, count: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """`count` 0-255 images (N, h, w, 3) drawn at random (seeded) from an array or from a whole dataset of
    images or (images, labels) batches (reservoir sampling: every class, however the data is ordered),
    resized to `size` when they differ."""
    rng = np.random.default_rng(seed)
    if isinstance(data, tf.data.Dataset):
        kept, seen = [], 0
        for batch in data:
            for image in np.asarray(batch[0] if isinstance(batch, (tuple, list)) else batch, np.float32):
                if len(kept) < count:
                    kept.append(image)
                elif (j := rng.integers(seen + 1)) < count:
                    kept[j] = image
                seen += 1
        data = np.stack(kept) if kept else np.zeros((0, 1, 1, 3), np.float32)
    elif len(data) > count:
        data = np.asarray(data)[np.sort(rng.choice(len(data), count, replace=False))]
    images = np.asarray(data, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise ValueError(f"Images must be RGB images shaped (N, height, width, 3), got shape {images.shape}.")
    return _resized(images, size)


def _resized(images, size) -> np.ndarray:
    images = np.asarray(images, np.float32)
    return images if images.shape[1:3] == tuple(size) else tf.image.resize(images, size, antialias=True).numpy()


# ---------------------------------------------------------------- the two export formats

def _files(path: Path, kinds) -> tuple[dict, Path]:
    """({kind: .tflite file}, labels file) for `path`: a .tflite file name or a folder."""
    if path.suffix == ".tflite":
        path.parent.mkdir(parents=True, exist_ok=True)
        files = {kind: path if i == 0 else path.with_name(f"{path.stem}_{kind}.tflite")
                 for i, kind in enumerate(kinds)}
        return files, path.with_name(path.stem + "_labels.txt")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"Cannot export to {path}: it is a file, expected a directory.")
    path.mkdir(parents=True, exist_ok=True)
    return {kind: path / FILES[kind] for kind in kinds}, path / "labels.txt"


def _write(model, path, class_names, sample_images, contents: dict, validation, baselines=None) -> dict:
    """Write `contents` ({kind: flatbuffer}) and labels.txt; check each file, measure the accuracy table."""
    files, labels = _files(path, list(contents))
    for kind, content in contents.items():
        files[kind].write_bytes(content)
    if class_names:
        labels.write_text("\n".join(class_names) + "\n")
    images = reference_images(sample_images, input_size(model))
    first = next(iter(files.values()))
    result = {"path": str(first), "size_bytes": first.stat().st_size,
              "files": {k: {"path": str(f), "size_bytes": f.stat().st_size} for k, f in files.items()},
              "check": {kind: check_tflite(file, model, images) for kind, file in files.items()},
              "io": io_types(first)}
    if validation is not None:
        result["accuracy"] = accuracy_table(model, {**(baselines or {}), **files}, validation)
        (first.parent / f"{first.stem}_accuracy.txt").write_text(format_table(result["accuracy"]) + "\n")
    return result


def export_float(model, path, class_names, sample_images, validation=None) -> dict:
    """The "tflite" format: float32 and dynamic-range files (`workbench.deploy.export`)."""
    contents = {kind: convert(converter(model, kind), kind) for kind in ("float32", "dynamic_range")}
    return _write(model, path, class_names, sample_images, contents, validation)


def export_int8(model, path, class_names, sample_images, calibration=None, validation=None) -> dict:
    """The "tflite_int8" format: `model_int8.tflite`, calibrated on `CALIBRATION_IMAGES` of `calibration`.

    With `validation`, float32 and dynamic-range conversions (in memory) join the accuracy table.
    """
    if calibration is None:
        raise ValueError("The tflite_int8 export needs calibration images, the run's training data: "
                         "export(..., calibration=data.train_plain) (a dataset of (images, labels) or an array).")
    images = representative_images(calibration, input_size(model))
    contents = {"int8": convert(converter(model, "int8", images), "int8")}
    baselines = None if validation is None else {
        kind: convert(converter(model, kind), kind) for kind in ("float32", "dynamic_range")}
    result = _write(model, path, class_names, sample_images, contents, validation, baselines)
    return {**result, "calibration_images": int(len(images))}


def reference_images(sample_images, size, limit: int = 64) -> np.ndarray:
    """Images (N, h, w, 3) in 0-255 to check a .tflite with: `sample_images` (an array or a dataset) or,
    when None, the validation photos of `wb.sample_dataset()` (real textures, offline)."""
    if sample_images is None:
        from PIL import Image

        from workbench.data.sample import sample_dataset

        files = sorted((sample_dataset() / "val").rglob("*.jpg"))
        sample_images = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
    if isinstance(sample_images, tf.data.Dataset):
        return representative_images(sample_images, size, limit)
    return representative_images(np.asarray(sample_images)[:limit], size, limit)


# ---------------------------------------------------------------- running a .tflite

def interpreter(tflite, threads: int | None = None, delegates: bool = True) -> tf.lite.Interpreter:
    """An interpreter for a .tflite path or flatbuffer bytes (`threads`: default all cores; `delegates`:
    False for TFLite's builtin kernels alone, without the default XNNPACK delegate)."""
    source = {"model_content": tflite} if isinstance(tflite, bytes) else {"model_path": str(tflite)}
    resolver = {} if delegates else {
        "experimental_op_resolver_type": tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    return tf.lite.Interpreter(**source, num_threads=threads or os.cpu_count(), **resolver)


def quantize(images, detail):
    """Float 0-255 images as the input tensor's dtype (quantized with its scale and zero point)."""
    if detail["dtype"] == np.float32:
        return images
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(images / scale + zero), info.min, info.max).astype(detail["dtype"])


def dequantize(values, detail):
    if detail["dtype"] == np.float32:
        return values
    scale, zero = detail["quantization"]
    return (values.astype(np.float32) - zero) * scale


def tflite_predict(tflite, images, batch_size: int = 16) -> np.ndarray:
    """Run a .tflite export (path or bytes; float or quantized input) on 0-255 images (N, H, W, 3);
    return probabilities (N, classes)."""
    runner = interpreter(tflite)
    inp, out = runner.get_input_details()[0], runner.get_output_details()[0]
    images = np.asarray(images, np.float32)
    outputs, current = [], None
    for start in range(0, len(images), batch_size):
        batch = quantize(images[start:start + batch_size], inp)
        if batch.shape != current:
            runner.resize_tensor_input(inp["index"], batch.shape)
            runner.allocate_tensors()
            current = batch.shape
        runner.set_tensor(inp["index"], batch)
        runner.invoke()
        outputs.append(dequantize(runner.get_tensor(out["index"]), out))
    return np.concatenate(outputs)


def check_tflite(tflite_file, model: keras.Model, images) -> dict:
    """Compare a .tflite export with the Keras model on `images`: max |dp| and top-1 agreement."""
    images = np.asarray(images, np.float32)
    expected = np.asarray(probabilities(model, model.predict(images, batch_size=16, verbose=0)))
    got = tflite_predict(tflite_file, images)
    return {"images": int(len(images)),
            "max_abs_diff": float(np.max(np.abs(got - expected))),
            "top1_agreement": float(np.mean(got.argmax(-1) == expected.argmax(-1)))}


def latencies(tflites: dict, image, repeats: int = 30, threads: int = 1, delegates: bool = True) -> dict:
    """Single-image latency in ms of each .tflite (path or bytes) in `tflites`: the median of `repeats`
    interleaved invocations (one of each in turn, so a busy machine slows them alike), on `threads` threads."""
    runners = {}
    for name, tflite in tflites.items():
        runner = interpreter(tflite, threads, delegates)
        inp = runner.get_input_details()[0]
        runner.resize_tensor_input(inp["index"], (1,) + tuple(image.shape))
        runner.allocate_tensors()
        runner.set_tensor(inp["index"], quantize(np.asarray(image, np.float32)[None], inp))
        runner.invoke()  # warm-up
        runners[name] = runner
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.invoke()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def grouped_convs(tflite) -> list[str]:
    """The CONV_2D ops of a .tflite whose filter has fewer input channels than their input (grouped)."""
    runner = interpreter(tflite)
    shapes = {t["index"]: t["shape"] for t in runner.get_tensor_details()}
    return [f"op {op['index']}" for op in runner._get_ops_details() if op["op_name"] == "CONV_2D"
            and shapes[op["inputs"][0]][-1] != shapes[op["inputs"][1]][-1]]


def io_types(tflite) -> dict:
    """{"input": dtype name, "input_quantization": (scale, zero point), "output": ..., ...} of a .tflite."""
    runner = interpreter(tflite)
    inp, out = runner.get_input_details()[0], runner.get_output_details()[0]
    return {"input": np.dtype(inp["dtype"]).name, "input_quantization": list(inp["quantization"]),
            "output": np.dtype(out["dtype"]).name, "output_quantization": list(out["quantization"])}


# ---------------------------------------------------------------- accuracy on the validation images

def _batches(validation, size):
    """(images, labels) batches of 0-255 images at `size` from a dataset or an (images, labels) pair."""
    if isinstance(validation, tf.data.Dataset):
        for images, labels in validation:
            yield _resized(images, size), np.asarray(labels)
    else:
        images, labels = validation
        for start in range(0, len(images), 64):
            yield _resized(images[start:start + 64], size), np.asarray(labels[start:start + 64])


def accuracy_table(model: keras.Model, tflites: dict, validation, repeats: int = 30) -> dict:
    """{"images": n, "rows": [{format, top1, top1_agreement, size_bytes, latency_ms}, ...]} on `validation`.

    `tflites` maps a kind ("float32", ...) to a .tflite path or bytes. Rows:
    the Keras model (size and latency None: not a TFLite file), then each .tflite,
    its top-1 agreement with the Keras model and its single-image latency (`latencies`).
    """
    size = input_size(model)
    correct = {"keras": 0, **{k: 0 for k in tflites}}
    agree = {k: 0 for k in tflites}
    n, first = 0, None
    for images, labels in _batches(validation, size):
        keras_top1 = np.asarray(model.predict(images, batch_size=32, verbose=0)).argmax(-1)
        correct["keras"] += int(np.sum(keras_top1 == labels))
        for kind, tflite in tflites.items():
            top1 = tflite_predict(tflite, images).argmax(-1)
            correct[kind] += int(np.sum(top1 == labels))
            agree[kind] += int(np.sum(top1 == keras_top1))
        n += len(labels)
        first = images[0] if first is None else first
    if not n:
        raise ValueError("The validation data holds no images.")
    timing = latencies(tflites, first, repeats)
    rows = [{"format": "keras", "top1": correct["keras"] / n, "top1_agreement": 1.0, "size_bytes": None,
             "latency_ms": None}]
    rows += [{"format": kind, "top1": correct[kind] / n, "top1_agreement": agree[kind] / n,
              "size_bytes": len(t) if isinstance(t, bytes) else Path(t).stat().st_size,
              "latency_ms": timing[kind]} for kind, t in tflites.items()]
    return {"images": n, "latency_threads": 1, "rows": rows}


def format_table(table: dict) -> str:
    """The accuracy table as text: format, top-1, agreement with Keras, size MB, latency ms."""
    lines = [f"{'format':<14} {'top-1':>6} {'agree':>6} {'MB':>6} {'ms':>7}   ({table['images']} validation "
             f"images, latency: one image, {table['latency_threads']} thread)"]
    for r in table["rows"]:
        mb = "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 2**20:.2f}"
        ms = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}"
        lines.append(f"{r['format']:<14} {r['top1']:>6.3f} {r['top1_agreement']:>6.3f} {mb:>6} {ms:>7}")
    return "\n".join(lines)
