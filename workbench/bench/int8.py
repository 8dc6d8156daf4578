"""Int8 TFLite benchmark: accuracy, size and latency of every TFLite form of a fine-tuned RegNet.

    python -m workbench.bench.int8 --variant regnety_200mf --dataset sample

Fine-tunes `variant` on `dataset` with `wb.finetune` (random initialization:
pretrained weights are not reachable offline) once, saving the model under
`--models` (default /work/int8-models), then exports it with
`wb.export(..., "tflite")` and `"tflite_int8"` and prints, on the run's
validation images: top-1 of the Keras model and of each .tflite, its top-1
agreement with the Keras model, size and single-image latency in the TFLite
interpreter (median of interleaved repetitions, in one process).

Datasets (offline, real images): `sample` (brick/grass/gravel photos, 240
training / 60 validation images) and `digits` (scikit-learn's 1,797
handwritten digits as 40 px PNGs, 10 classes, 15% validation).
`--options` also measures the int8 alternatives of `workbench.deploy.tflite`
(calibration size, float SE/SiLU, 16x8 activations, grouped-conv lowering).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import tensorflow as tf

MODELS = Path("/work/int8-models")
EPOCHS = {"sample": 10, "digits": 5}


def load(dataset: str, size: int):
    import workbench as wb
    from workbench.bench.planner import folder_of
    return wb.load_folder(folder_of(dataset), image_size=size, batch_size=32, val_split=0.15, seed=0,
                          verbose=False)


def trained(variant: str, dataset: str, size: int, models: Path):
    """(the model fine-tuned on `dataset`, its data): trained once, then read from `models`."""
    import keras
    import workbench as wb
    data = load(dataset, size)
    path = models / f"{variant}-{dataset}-{size}.keras"
    if path.exists():
        return keras.saving.load_model(path), data
    model = wb.regnet(variant, num_classes=data.num_classes, input_shape=(size, size, 3))
    result = wb.finetune(model, data, epochs=EPOCHS[dataset], lr=2e-3, pretrained=False, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.model.save(path)
    return result.model, data


def table(model, data, size) -> dict:
    """The export's accuracy table: `wb.export(..., "tflite_int8")` with the run's calibration and validation."""
    import tempfile
    from workbench.deploy.export import export
    with tempfile.TemporaryDirectory() as tmp:
        result = export(model, Path(tmp) / "int8", "tflite_int8", data.class_names, verbose=False,
                        calibration=data.train_plain, validation=data.val)
    return {"io": result["io"], "calibration_images": result["calibration_images"], **result["accuracy"]}


def _int8(model, calibration, **options) -> bytes:
    """One int8 conversion with `options` (`tflite.converter`'s, or float_ops: op names kept in float)."""
    from workbench.deploy import tflite
    denylisted = options.pop("float_ops", None)
    conv = tflite.converter(model, "int8", calibration, **options)
    if denylisted:  # selective quantization: these ops stay float (TFLite's quantization debugger)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=conv, debug_dataset=tflite._representative(calibration),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=denylisted))
        content = debugger.get_nondebug_quantized_model()
    else:
        content = tflite.convert(conv)
    return content


def options(model, data, size) -> list[dict]:
    """Each int8 alternative: calibration size, per-tensor weights, 16x8 activations, SE or head kept in float."""
    from workbench.deploy import tflite
    alternatives = {"calibration 100": dict(count=100), "calibration 300 (default)": dict(count=300),
                    "calibration 1000": dict(count=1000), "per-tensor weights": dict(per_channel=False),
                    "16x8 activations": dict(activations16=True),
                    "SE in float (LOGISTIC, MUL)": dict(float_ops=["LOGISTIC", "MUL"]),
                    "head in float (FULLY_CONNECTED, SOFTMAX)": dict(float_ops=["FULLY_CONNECTED", "SOFTMAX"])}
    contents = {}
    for name, opts in alternatives.items():
        count = opts.pop("count", tflite.CALIBRATION_IMAGES)
        contents[name] = _int8(model, tflite.representative_images(data.train_plain, (size, size), count),
                               **opts)
    return tflite.accuracy_table(model, contents, data.val)


def lowering(model, data, size) -> dict:
    """Single-image latency (ms) of the grouped-conv forms, float32 and int8, with XNNPACK (the default) and
    on the builtin kernels alone; the int8 forms the interpreter refuses are listed as such."""
    from workbench.deploy import tflite
    from workbench.models.layers import set_grouped_conv_implementation
    calibration = tflite.representative_images(data.train_plain, (size, size), 100)
    forms = {"per group (default)": 1, "chunks of 16 channels": None, "one block-diagonal conv": 10**6,
             "native grouped": "native"}
    contents, refused = {}, {}
    for name, groups in forms.items():
        set_grouped_conv_implementation(model, "native" if groups == "native" else "auto")
        for kind in ("float32", "int8"):
            content = tflite.convert(tflite.converter(model, kind, calibration, 1 if groups == "native" else groups))
            try:
                tflite.interpreter(content).allocate_tensors()
                contents[f"{name} {kind}"] = content
            except RuntimeError as err:
                refused[f"{name} {kind}"] = str(err).splitlines()[0]
    set_grouped_conv_implementation(model, "auto")
    image = tflite.representative_images(data.val, (size, size), 1)[0]
    xnnpack = tflite.latencies(contents, image, repeats=50)
    builtin = tflite.latencies(contents, image, repeats=10, delegates=False)
    return {"xnnpack_ms": xnnpack, "builtin_ms": builtin, "refused": refused}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="regnety_200mf")
    parser.add_argument("--dataset", default="sample", choices=("sample", "digits"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--models", type=Path, default=MODELS)
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--options", action="store_true", help="also measure the int8 alternatives")
    parser.add_argument("--lowering", action="store_true", help="also time the grouped-conv lowerings")
    args = parser.parse_args(argv)
    from workbench.deploy.tflite import format_table
    model, data = trained(args.variant, args.dataset, args.size, args.models)
    if args.train_only:
        print(json.dumps({"variant": args.variant, "dataset": args.dataset}))
        return
    result = table(model, data, args.size)
    print(f"{args.variant} on {args.dataset} at {args.size} px (input {result['io']['input']} "
          f"{result['io']['input_quantization']}, calibration {result['calibration_images']} training images)")
    print(format_table(result))
    print(json.dumps({"variant": args.variant, "dataset": args.dataset, "size": args.size, **result}))
    if args.options:
        alternatives = options(model, data, args.size)
        print(format_table(alternatives))
        print(json.dumps({"options": alternatives}))
    if args.lowering:
        forms = lowering(model, data, args.size)
        for name, ms in forms["xnnpack_ms"].items():
            print(f"{name:<36} {ms:>7.2f} ms XNNPACK {forms['builtin_ms'][name]:>8.2f} ms builtin kernels")
        for name, why in forms["refused"].items():
            print(f"{name:<36} refused by the interpreter: {why}")
        print(json.dumps({"lowering": forms}))


if __name__ == "__main__":
    main()
