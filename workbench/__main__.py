"""The command line: `python -m workbench predict MODEL IMAGES [-o predictions.csv] [--top-k 3] [--batch-size 32]`."""
from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description="RegNet workbench commands.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="classify images with a trained model and write a CSV",
        description="Classify a folder (searched recursively) or image files with a workbench model "
                    "(model.keras, an exported SavedModel folder, a .tflite or an .onnx) and write a CSV.")
    predict.add_argument("model", help="model.keras, a SavedModel folder, a .tflite or an .onnx file")
    predict.add_argument("images", nargs="+", help="a folder of images, or image files")
    predict.add_argument("-o", "--output", default="predictions.csv", help="the CSV to write (predictions.csv)")
    predict.add_argument("--top-k", type=int, default=3, help="classes per image (3)")
    predict.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    predict.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"),
                         help="a Keras model in bf16, BatchNorm folded (fast on CPUs with native bf16)")
    return parser


def main(argv=None) -> int:
    """Run a command; return the exit status (1 with one sentence on stderr when the input is bad)."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notes would bury the table
    import workbench as wb

    images = args.images[0] if len(args.images) == 1 else args.images
    try:
        predictions = wb.predict(args.model, images, top_k=args.top_k, batch_size=args.batch_size,
                                 precision=args.precision)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(predictions.summary())
    print(f"Wrote {len(predictions)} predictions to {predictions.to_csv(args.output).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
