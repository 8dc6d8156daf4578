"""An offline sample dataset of real photos: brick, grass and gravel textures.

The three source photos ship inside scikit-image (`skimage/data/brick.png`,
`grass.png`, `gravel.png`, 512x512 grayscale, all CC0). Training crops come
from the top three quarters of each photo and validation crops from the
bottom quarter, so the two splits never share pixels.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

from workbench.data.pipeline import cache_root

CLASSES = ("brick", "grass", "gravel")
_VERSION = "textures-v1"
_SPLITS = {"train": (0.0, 0.75, 80), "val": (0.75, 1.0, 20)}  # rows from, rows to, crops per class
_OUT = 128


def source_photo(name: str) -> Image.Image:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("wb.sample_dataset() needs scikit-image (pip install scikit-image), "
                                  "which ships the sample photos.")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"{name}.png"
    return Image.open(path).convert("RGB")


def crops(image: Image.Image, top: float, bottom: float, count: int, rng, sides=(64, 192), out=_OUT,
          turn=True) -> list[Image.Image]:
    """Random square crops from a band of rows (side within `sides`, clipped to the band), resized to
    `out` (None: as cut), with random quarter turns and flips when `turn`."""
    w, h = image.size
    y0, y1 = int(top * h), int(bottom * h)
    result = []
    for _ in range(count):
        side = int(rng.integers(min(sides[0], y1 - y0), min(sides[1], y1 - y0, w) + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(y0, y1 - side + 1))
        crop = image.crop((x, y, x + side, y + side))
        if out:
            crop = crop.resize((out, out), Image.Resampling.BICUBIC)
        if turn:
            crop = crop.rotate(90 * int(rng.integers(4)))
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop
        result.append(crop)
    return result


def sample_unlabeled(path=None, per_class: int = 100) -> Path:
    """Write the sample's unlabelled images once and return their folder: `per_class` further crops of each
    photo's training band (never its validation band), shuffled into one folder without class sub-folders.

    Their true classes are in the folder's `_truth.json` ({file name: class}), which the image scan
    ignores: it lets a run report how accurate its pseudo-labels were.
    """
    root = Path(path).expanduser() if path else cache_root() / "sample" / f"{_VERSION}-unlabeled-{per_class}"
    if (root / ".complete").exists():
        return root
    rng = np.random.default_rng(1)
    top, bottom, _ = _SPLITS["train"]
    images = [(label, crop) for label in CLASSES for crop in crops(source_photo(label), top, bottom, per_class, rng)]
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, j in enumerate(rng.permutation(len(images))):
        label, crop = images[j]
        crop.save(root / f"photo_{i:04d}.jpg", quality=90)
        truth[f"photo_{i:04d}.jpg"] = label
    (root / "_truth.json").write_text(json.dumps(truth, indent=0) + "\n")
    (root / ".complete").write_text(_VERSION + "\n")
    return root


def sample_truth(folder) -> dict[str, str]:
    """{file name: class} of `sample_unlabeled`'s images."""
    return json.loads((Path(folder) / "_truth.json").read_text())


def sample_dataset(path=None) -> Path:
    """Write the sample dataset (train/ and val/, one sub-folder per class) once; return its folder."""
    root = Path(path).expanduser() if path else cache_root() / "sample" / _VERSION
    if (root / ".complete").exists():
        return root
    rng = np.random.default_rng(0)
    for label in CLASSES:
        photo = source_photo(label)
        for split, (top, bottom, count) in _SPLITS.items():
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(crops(photo, top, bottom, count, rng)):
                crop.save(folder / f"{label}_{i:03d}.jpg", quality=90)
    (root / ".complete").write_text(_VERSION + "\n")
    return root


def sample_multilabel(path=None, train: int = 120, val: int = 60, rare: float = 0.2, test: int = 0) -> Path:
    """Write a multi-label sample once and return its folder: images/*.jpg and labels.csv (file, labels, split).

    Each image is a 2x2 mosaic of crops of the sample's texture photos; its labels ("brick|grass") are
    exactly the textures in it, so the truth is known. Gravel is rare (in about `rare` of the images);
    brick and grass are each in about half or more. Training crops come from each photo's top three quarters,
    validation (and `test`) crops from its bottom quarter.
    """
    name = f"{_VERSION}-multilabel-{train}-{val}-{rare}-{test}"
    root = Path(path).expanduser() if path else cache_root() / "sample" / name
    if (root / ".complete").exists():
        return root
    rng = np.random.default_rng(2)
    photos = {name: source_photo(name) for name in CLASSES}
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["file,labels,split"]
    for split, count in (("train", train), ("val", val), ("test", test)):
        top, bottom, _ = _SPLITS["train" if split == "train" else "val"]
        for i in range(count):
            present = [name for name, p in zip(CLASSES, (0.6, 0.6, rare)) if rng.random() < p] or ["brick"]
            tiles = list(present) + [present[int(rng.integers(len(present)))] for _ in range(4 - len(present))]
            mosaic = Image.new("RGB", (_OUT, _OUT))
            for k, j in enumerate(rng.permutation(4)):
                tile = crops(photos[tiles[j]], top, bottom, 1, rng, sides=(48, 128), out=_OUT // 2)[0]
                mosaic.paste(tile, ((k % 2) * _OUT // 2, (k // 2) * _OUT // 2))
            name = f"{split}_{i:04d}.jpg"
            mosaic.save(root / "images" / name, quality=90)
            rows.append(f"{name},{'|'.join(present)},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / ".complete").write_text(_VERSION + "\n")
    return root
