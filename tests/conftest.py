"""Fixtures for the data tests: image folders written with PIL."""

import numpy as np
import pytest
from PIL import Image


def photo(seed: int, size=(80, 60)) -> Image.Image:
    """A smooth random RGB picture (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def write_every_format(folder, seed: int) -> list[str]:
    """One file per supported format and colour mode; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    im = photo(seed)
    im.save(folder / "rgb.jpg")
    im.convert("L").save(folder / "gray.jpeg")
    im.convert("CMYK").save(folder / "cmyk.jpg")
    im.save(folder / "upper.JPG")
    im.save(folder / "rgb.png")
    im.convert("P").save(folder / "palette.png")
    im.convert("RGBA").save(folder / "rgba.png")
    im.convert("L").save(folder / "gray.PNG")
    im.save(folder / "rgb.bmp")
    im.convert("P").save(folder / "palette.bmp")
    im.convert("1").save(folder / "bilevel.bmp")
    im.convert("P").save(folder / "anim.gif", save_all=True, append_images=[photo(seed + 99).convert("P")])
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def mixed_folder(tmp_path):
    """Two classes in every format, plus corrupt, hidden and non-image files."""
    root = tmp_path / "photos"
    for seed, name in enumerate(["cats", "dogs"]):
        write_every_format(root / name, seed * 10)
    good = photo(5)
    good.save(root / "cats" / ".hidden.jpg")
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "dogs" / "fake.jpg").write_text("this is text, not a JPEG")
    data = (root / "cats" / "rgb.jpg").read_bytes()
    (root / "cats" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return root


def write_classes(root, counts: dict, size=(64, 48)):
    """A folder with `counts[name]` JPEGs per class."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            photo(1000 * c + i, size).save(root / name / f"{i:03d}.jpg")
    return root
