"""Export a fine-tuned model in the forms people deploy: .keras, SavedModel, TF Hub, TFLite, ONNX.

Every export takes raw RGB images with values 0-255, like the Keras model.

    wb.export(model, "out/model.keras", "keras")
    wb.export(model, "out/saved_model", "saved_model", class_names)
    wb.export(model, "out/hub", "hub")
    wb.export(model, "out/tflite", "tflite", class_names)
    wb.export_all(model, "runs/flowers", "saved_model,tflite", class_names)

- "keras": the Keras 3 model file (reload with `keras.saving.load_model`).
- "saved_model": a TF SavedModel for TF Serving / `tf.saved_model.load`, with
  two signatures: `serving_default` (float32 `[batch, height, width, 3]`, any
  size) and `serving_uint8` (the same for uint8). Images are resized inside
  (`tf.image.resize`, bilinear with antialiasing) to the model's input size
  (224 when the model takes any size), and each returns `probabilities`,
  `class_index` and, when `class_names` is given, `class_name` (tf.string).
- "hub": a TF2 Hub-format SavedModel of the backbone (everything up to the
  pooled feature vector, `contract.feature_extractor`) for `hub.load`,
  `hub.KerasLayer(trainable=True)`
  (tf_keras) or `wb.hub_backbone` (Keras 3). It has `__call__(images,
  training=False)`, `variables`, `trainable_variables` and
  `regularization_losses`, so whoever loads it can fine-tune it. Images of
  another size are resized inside (bilinear, no antialiasing, so that models
  built on it still convert to TFLite). Unlike Hub's
  [0, 1] convention it takes 0-255 images; it records that in
  `input_range` (a variable holding `[0, 255]`), which `wb.hub_classifier` reads.
- "tflite": `model_float32.tflite` and `model_dynamic_range.tflite` (int8
  weights, float activations), plus `labels.txt`. Input: float32 0-255 images
  of the model's input size; output: probabilities. Both files are checked
  against the Keras model on real sample images; the figures are returned.
- "onnx": `model.onnx` (probabilities out, input as "tflite") and `labels.txt`,
  written by Keras' exporter through tf2onnx and checked in onnxruntime
  (`workbench.deploy.onnx`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from workbench.deploy.onnx import export_onnx
from workbench.models.contract import feature_extractor, probabilities
from workbench.models.layers import portable_graphs

FORMATS = ("keras", "saved_model", "hub", "tflite", "onnx")
DEFAULT_IMAGE_SIZE = 224
EXPORT_DIR = "export"
_NAMES = {"keras": "model.keras", "saved_model": "saved_model", "hub": "hub", "tflite": "tflite", "onnx": "onnx"}


def parse_formats(formats) -> list[str]:
    """"saved_model,tflite" or a list -> validated, de-duplicated list of format names."""
    if formats is None:
        return []
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = []
    for item in items:
        name = str(item).strip().lower().replace("-", "_")
        if not name:
            continue
        if name not in FORMATS:
            raise ValueError(f"Unknown export format {str(item).strip()!r}; valid formats are "
                             f"{', '.join(FORMATS)} (comma-separated for several).")
        if name not in out:
            out.append(name)
    return out


def export(model: keras.Model, path, format: str, class_names=None, sample_images=None,
           verbose: bool = True, thresholds=None) -> dict:
    """Write `model` to `path` in `format` (one of FORMATS); return what was written.

    The result is a JSON-friendly dict with at least `format`, `path` and
    `size_bytes`. For "tflite" it also has `files` and `check` (per file:
    `max_abs_diff` of probabilities and `top1_agreement` with the Keras model
    on `sample_images`: an array of 0-255 images, a dataset of
    `(images, labels)`, or None for the built-in sample photos).
    `thresholds` ({class name: float}, a multi-label model's decision
    thresholds) is written as JSON beside each labels file ("thresholds.json").
    """
    fmts = parse_formats(format if isinstance(format, str) else [format])
    if len(fmts) != 1:
        raise ValueError(f"export() writes one format, got {format!r}: pass one of {', '.join(FORMATS)} "
                         f"(wb.export_all writes several).")
    fmt = fmts[0]
    if not isinstance(model, keras.Model):
        raise TypeError(f"export() needs a keras.Model, got {type(model).__name__}.")
    class_names = _check_class_names(model, class_names)
    writer = {"keras": _export_keras, "saved_model": _export_saved_model, "hub": _export_hub,
              "tflite": _export_tflite, "onnx": _export_onnx}[fmt]
    with portable_graphs():  # a graph every TensorFlow build (and TFLite) runs
        result = writer(model, Path(path).expanduser(), class_names, sample_images)
    result = {"format": fmt, **result}
    if thresholds:
        _write_thresholds(Path(result["path"]), thresholds)
    if verbose:
        _report(result)
    return result


def export_all(model: keras.Model, output_dir, formats, class_names=None, sample_images=None,
               verbose: bool = True, thresholds=None) -> dict:
    """Export `model` in each of `formats` ("saved_model,tflite" or a list) under `output_dir/export/`.

    Format names are all validated before anything is written. Returns
    `{format: result of export()}`.
    """
    fmts = parse_formats(formats)
    root = Path(output_dir).expanduser() / EXPORT_DIR
    return {fmt: export(model, root / _NAMES[fmt], fmt, class_names, sample_images, verbose, thresholds)
            for fmt in fmts}


# ---------------------------------------------------------------- helpers

def input_size(model: keras.Model) -> tuple[int, int]:
    """The (height, width) the model is fed; DEFAULT_IMAGE_SIZE where it accepts any size."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    h, w = shape[1], shape[2]
    return int(h or DEFAULT_IMAGE_SIZE), int(w or DEFAULT_IMAGE_SIZE)


def _check_class_names(model, class_names):
    if class_names is None:
        return None
    names = [str(c) for c in class_names]
    outputs = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if outputs is not None and len(names) != outputs:
        raise ValueError(f"class_names has {len(names)} names but the model outputs {outputs} classes.")
    return names


def _write_thresholds(path: Path, thresholds: dict) -> None:
    """thresholds.json ({class name: threshold}) beside every labels file the export wrote."""
    for labels in (path.rglob("*labels.txt") if path.is_dir() else path.parent.glob("*labels.txt")):
        target = labels.with_name(labels.name.replace("labels.txt", "thresholds.json"))
        target.write_text(json.dumps({str(k): float(v) for k, v in thresholds.items()}, indent=2) + "\n")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _report(result):
    mb = result["size_bytes"] / 2**20
    print(f"Exported {result['format']} to {result['path']} ({mb:.1f} MB)")
    for name, check in result.get("check", {}).items():
        print(f"  {name}: max |p - p_keras| = {check['max_abs_diff']:.2e}, "
              f"top-1 agreement {check['top1_agreement']:.1%} on {check['images']} images")


def _directory(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"Cannot export to {path}: it is a file, expected a directory.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _resize(images, size, antialias=True):
    """float32 images resized to `size` (the identity when they already have that size)."""
    images = tf.cast(images, tf.float32)
    return tf.image.resize(images, size, antialias=antialias)


# ---------------------------------------------------------------- formats

def _export_keras(model, path, class_names, sample_images):
    if path.suffix != ".keras":
        path = _directory(path) / "model.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save(path)
    except Exception as err:  # noqa: BLE001 - re-raised with advice
        raise RuntimeError(f"Could not save the model as {path}: {err}. The 'saved_model' and "
                           f"'tflite' exports do not need Keras serialization; try those.") from err
    if class_names:
        path.with_name(path.stem + "_labels.txt").write_text("\n".join(class_names) + "\n")
    return {"path": str(path), "size_bytes": _size(path)}


def _serving_archive(model, class_names):
    size = input_size(model)
    names = tf.constant(class_names) if class_names else None

    def serve(images):
        probs = probabilities(model, model(_resize(images, size), training=False))
        index = tf.argmax(probs, axis=-1, output_type=tf.int32)
        out = {"probabilities": probs, "class_index": index}
        if names is not None:
            out["class_name"] = tf.gather(names, index)
        return out

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        archive.add_endpoint(name, serve, input_signature=[
            tf.TensorSpec([None, None, None, 3], dtype, name="images")])
    return archive


def _export_saved_model(model, path, class_names, sample_images):
    _serving_archive(model, class_names).write_out(str(_directory(path)), verbose=False)
    if class_names:
        (path / "assets").mkdir(exist_ok=True)
        (path / "assets" / "labels.txt").write_text("\n".join(class_names) + "\n")
    return {"path": str(path), "size_bytes": _size(path),
            "signatures": ["serving_default", "serving_uint8"]}


def _hub_module(backbone: keras.Model):
    """A TF2 Hub-format feature-vector object: `__call__(images, training=False)` on 0-255 images."""
    size = input_size(backbone)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")

    def call(images, training=False):
        # Plain bilinear (no antialiasing): ResizeBilinear is a TFLite builtin, ScaleAndTranslate is
        # not, so models built on this export (wb.hub_classifier) still convert to TFLite.
        return backbone(_resize(images, size, antialias=False), training=training)

    root = tf.__internal__.tracking.AutoTrackable()
    # hub.KerasLayer and wb.hub_backbone read these attributes of the loaded object.
    root.variables = [v.value for v in backbone.weights]
    root.trainable_variables = [v.value for v in backbone.trainable_weights]
    root.regularization_losses = []
    root.input_range = tf.Variable([0.0, 255.0], trainable=False, name="input_range")
    root.__call__ = tf.function(call, autograph=False)
    for training in (False, True):
        root.__call__.get_concrete_function(spec, training=training)
    serve = tf.function(lambda images: {"feature_vector": call(images, False)}, input_signature=[spec],
                        autograph=False)
    return root, serve.get_concrete_function()


def _export_hub(model, path, class_names, sample_images):
    backbone = feature_extractor(model)
    root, serve = _hub_module(backbone)
    tf.saved_model.save(root, str(_directory(path)), signatures={"serving_default": serve})
    return {"path": str(path), "size_bytes": _size(path),
            "feature_dim": int(backbone.output_shape[-1]), "input_size": list(input_size(model))}


def _tflite_converters(model):
    """Float32 and dynamic-range converters for one traced inference function."""
    h, w = input_size(model)

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="images")], autograph=False)
    def infer(images):
        return {"probabilities": probabilities(model, model(images, training=False))}

    function = infer.get_concrete_function()
    # The converter freezes the variables it finds on this object; a Keras 3 model does not
    # expose its tf.Variables as trackable children, so list them explicitly.
    root = tf.__internal__.tracking.AutoTrackable()
    root.variables = [v.value for v in model.weights]
    root.infer = infer
    converters = {}
    for kind in ("float32", "dynamic_range"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], root)
        if kind == "dynamic_range":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights, float activations
        converters[kind] = converter
    return converters


def _convert(converter, kind) -> bytes:
    try:
        return converter.convert()
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(f"TFLite conversion ({kind}) failed: {err}") from err


def _export_tflite(model, path, class_names, sample_images):
    if path.suffix == ".tflite":
        path.parent.mkdir(parents=True, exist_ok=True)
        files = {"float32": path, "dynamic_range": path.with_name(path.stem + "_dynamic_range.tflite")}
        labels = path.with_name(path.stem + "_labels.txt")
    else:
        folder = _directory(path)
        files = {"float32": folder / "model_float32.tflite",
                 "dynamic_range": folder / "model_dynamic_range.tflite"}
        labels = folder / "labels.txt"
    converters = _tflite_converters(model)
    for kind, file in files.items():
        file.write_bytes(_convert(converters[kind], kind))
    if class_names:
        labels.write_text("\n".join(class_names) + "\n")
    images = _sample_images(sample_images, input_size(model))
    check = {kind: check_tflite(file, model, images) for kind, file in files.items()}
    return {"path": str(files["float32"]), "size_bytes": _size(files["float32"]),
            "files": {k: {"path": str(f), "size_bytes": _size(f)} for k, f in files.items()},
            "check": check}


def _export_onnx(model, path, class_names, sample_images):
    size = input_size(model)
    return export_onnx(model, path, class_names, _sample_images(sample_images, size), size)


# ---------------------------------------------------------------- TFLite check

def tflite_predict(tflite_file, images, batch_size: int = 16) -> np.ndarray:
    """Run a .tflite export on 0-255 images (N, H, W, 3); return probabilities (N, classes)."""
    interpreter = tf.lite.Interpreter(model_path=str(tflite_file), num_threads=os.cpu_count())
    inp = interpreter.get_input_details()[0]
    out_index = interpreter.get_output_details()[0]["index"]
    images = np.asarray(images, np.float32)
    outputs, current = [], None
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if batch.shape != current:
            interpreter.resize_tensor_input(inp["index"], batch.shape)
            interpreter.allocate_tensors()
            current = batch.shape
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out_index).copy())
    return np.concatenate(outputs)


def check_tflite(tflite_file, model: keras.Model, images) -> dict:
    """Compare a .tflite export with the Keras model on `images`: max |dp| and top-1 agreement."""
    images = np.asarray(images, np.float32)
    expected = np.asarray(probabilities(model, model.predict(images, batch_size=16, verbose=0)))
    got = tflite_predict(tflite_file, images)
    return {"images": int(len(images)),
            "max_abs_diff": float(np.max(np.abs(got - expected))),
            "top1_agreement": float(np.mean(got.argmax(-1) == expected.argmax(-1)))}


def _sample_images(sample_images, size, limit: int = 64) -> np.ndarray:
    """Images (N, h, w, 3) in 0-255 for the TFLite check, resized to the model's input size."""
    if sample_images is None:
        sample_images = _builtin_samples()
    if isinstance(sample_images, tf.data.Dataset):
        batches, n = [], 0
        for batch in sample_images:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            batches.append(np.asarray(x, np.float32))
            n += len(batches[-1])
            if n >= limit:
                break
        sample_images = np.concatenate(batches)
    images = np.asarray(sample_images, np.float32)[:limit]
    if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise ValueError(f"sample_images must be RGB images shaped (N, height, width, 3), "
                         f"got shape {images.shape}.")
    if images.shape[1:3] != tuple(size):
        images = _resize(images, size).numpy()
    return images


def _builtin_samples() -> np.ndarray:
    """The validation photos of `wb.sample_dataset()` (real textures, offline)."""
    from PIL import Image

    from workbench.data.sample import sample_dataset

    files = sorted((sample_dataset() / "val").rglob("*.jpg"))
    return np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
