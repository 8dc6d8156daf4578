"""Benchmark `wb.predict` against the plain batched `model.predict` on the same images, in one process.

    python -m workbench.bench.predict [--images 320] [--size 224] [--variant regnety_200mf] [--batch 32]
                                      [--repeats 3]

`wb.predict` reads a folder of 500x375 JPEGs: it checks every file, then
decodes, resizes and crops them in tf.data while the model runs. `model.predict`
gets the same crops already decoded in memory, so the ratio is what reading a
folder costs on top of inference. Each is timed `--repeats` times, interleaved,
after a warm-up; the best time of each is kept.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from workbench.bench.data import write_jpegs
from workbench.data.folders import check_images, image_files
from workbench.deploy.predict import predict
from workbench.models.regnet import regnet


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--variant", default="regnety_200mf")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model = regnet(args.variant, num_classes=3, weights=None, input_shape=(args.size, args.size, 3))
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpegs(Path(tmp), args.images)
        first = predict(model, folder, batch_size=args.batch, class_names=["a", "b", "c"])  # warm-up
        crops = first.images(args.images)  # the very images the model saw, decoded, in memory
        model.predict(crops[:args.batch], batch_size=args.batch, verbose=0)
        runs = {"plain": lambda: model.predict(crops, batch_size=args.batch, verbose=0),
                "ours": lambda: predict(model, folder, batch_size=args.batch, class_names=["a", "b", "c"]),
                "check": lambda: check_images(image_files(folder), args.size)}
        times = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved, so that a busier moment of the machine hits all alike
            for name, run in runs.items():
                times[name].append(_timed(run))
        plain, ours, check = (min(times[name]) for name in runs)
    print(f"{args.variant}, {args.images} JPEGs 500x375 -> {args.size} px, batch {args.batch}")
    print(f"model.predict on decoded images in memory: {args.images / plain:7.1f} img/s")
    print(f"wb.predict on the folder (check + decode):  {args.images / ours:7.1f} img/s")
    print(f"  of which checking every file first:      {check:7.2f} s of {ours:.2f} s")
    print(f"ratio wb.predict / model.predict: {plain / ours:.2f}")


if __name__ == "__main__":
    main()
