"""Export a fine-tuned model in the forms people deploy: .keras, SavedModel, TF Hub, TFLite (float, int8), ONNX.

Every export takes raw RGB images with values 0-255, like the Keras model.

    wb.export(model, "out/model.keras", "keras")
    wb.export(model, "out/saved_model", "saved_model", class_names)
    wb.export(model, "out/hub", "hub")
    wb.export(model, "out/tflite", "tflite", class_names)
    wb.export(model, "out/int8", "tflite_int8", class_names, calibration=data.train_plain,
              validation=data.val)
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
  of the model's input size; output: probabilities.
- "tflite_int8": `model_int8.tflite`, full-integer (int8 weights and
  activations, uint8 input taking the raw pixels, uint8 probabilities),
  calibrated on `calibration` (the run's training images), plus `labels.txt`.
  See `workbench.deploy.tflite` for both TFLite formats.
- "onnx": `model.onnx` (probabilities out, 0-255 images of the model's input
  size in) and `labels.txt`, written by Keras' exporter through tf2onnx and
  checked in onnxruntime (`workbench.deploy.onnx`).

Every .tflite is checked against the Keras model on real sample images. With
`validation` (the run's validation batches of images and labels) the TFLite
exports also report the top-1 of the Keras model and of each .tflite (float32,
dynamic-range and, for "tflite_int8", int8) on those images, with file sizes and
single-image latencies (`accuracy` in the result, printed by the report).
A multi-label model's `thresholds` go as `thresholds.json` beside each labels file.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import keras
import tensorflow as tf

from workbench.deploy import tflite
from workbench.deploy.onnx import export_onnx
from workbench.models.contract import input_size
from workbench.models.contract import feature_extractor, probabilities
from workbench.models.layers import portable_graphs

FORMATS = ("keras", "saved_model", "hub", "tflite", "tflite_int8", "onnx")
EXPORT_DIR = "export"
_NAMES = {"keras": "model.keras", "saved_model": "saved_model", "hub": "hub", "tflite": "tflite",
          "tflite_int8": "tflite_int8", "onnx": "onnx"}


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
           verbose: bool = True, calibration=None, validation=None, thresholds=None) -> dict:
    """Write `model` to `path` in `format` (one of FORMATS); return what was written.

    The result is a JSON-friendly dict with at least `format`, `path` and
    `size_bytes`. For "tflite" it also has `files` and `check` (per file:
    `max_abs_diff` of probabilities and `top1_agreement` with the Keras model
    on `sample_images`: an array of 0-255 images, a dataset of
    `(images, labels)`, or None for the built-in sample photos).
    calibration: "tflite_int8"'s calibration images (required there), the
    run's training images: a dataset of `(images, labels)` or an array.
    validation: the run's validation data, a dataset of `(images, labels)` or
    an `(images, labels)` pair; the TFLite formats then add `accuracy`
    (`tflite.accuracy_table`).
    thresholds: {class name: float}, a multi-label model's decision
    thresholds, written as JSON beside each labels file ("thresholds.json").
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
              "tflite": partial(tflite.export_float, validation=validation),
              "tflite_int8": partial(tflite.export_int8, calibration=calibration, validation=validation),
              "onnx": _export_onnx}[fmt]
    with portable_graphs():  # a graph every TensorFlow build (and TFLite) runs
        result = writer(model, Path(path).expanduser(), class_names, sample_images)
    if thresholds:
        _write_thresholds(Path(result["path"]), thresholds)
    result = {"format": fmt, **result}
    if verbose:
        _report(result)
    return result


def export_all(model: keras.Model, output_dir, formats, class_names=None, sample_images=None,
               verbose: bool = True, calibration=None, validation=None, thresholds=None) -> dict:
    """Export `model` in each of `formats` ("saved_model,tflite" or a list) under `output_dir/export/`.

    Format names are all validated before anything is written. Returns
    `{format: result of export()}`; `calibration`, `validation` and `thresholds` as `export`.
    """
    fmts = parse_formats(formats)
    root = Path(output_dir).expanduser() / EXPORT_DIR
    return {fmt: export(model, root / _NAMES[fmt], fmt, class_names, sample_images, verbose, calibration,
                        validation, thresholds) for fmt in fmts}


# ---------------------------------------------------------------- helpers

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
    if "accuracy" in result:
        print(tflite.format_table(result["accuracy"]))


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


def _export_onnx(model, path, class_names, sample_images):
    size = input_size(model)
    return export_onnx(model, path, class_names, tflite.reference_images(sample_images, size), size)
