"""Benchmark the folder pipeline: `python -m workbench.bench.data [--images 400] [--size 224]`."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from workbench.data.folders import load_folder
from workbench.data.sample import CLASSES, source_photo


def write_jpegs(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` 500x375 photo JPEGs (crops of the sample photos), spread over the sample classes."""
    rng = np.random.default_rng(seed)
    photos = {c: source_photo(c) for c in CLASSES}
    for i in range(count):
        label = CLASSES[i % len(CLASSES)]
        side = int(rng.integers(200, 400))
        x, y = rng.integers(0, 512 - side, size=2)
        crop = photos[label].crop((x, y, x + side, y + int(side * 0.75))).resize((500, 375))
        (folder / label).mkdir(parents=True, exist_ok=True)
        crop.save(folder / label / f"{i:05d}.jpg", quality=90)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images)
        start = time.perf_counter()
        data = load_folder(tmp, image_size=args.size, batch_size=args.batch, verbose=False)
        check = time.perf_counter() - start
        print(f"{args.images} JPEGs 500x375 -> {args.size}x{args.size}, batch {args.batch}")
        print(f"checking (decode every file once): {check:6.2f} s  {args.images / check:7.0f} img/s")
        for epoch in (1, 2):
            start, seen = time.perf_counter(), 0
            for images, _ in data.train:
                seen += int(images.shape[0])
            took = time.perf_counter() - start
            kind = "decode + cache" if epoch == 1 else "cached"
            print(f"train epoch {epoch} ({kind:>14}): {took:6.2f} s  {seen / took:7.0f} img/s")


if __name__ == "__main__":
    main()
