"""What the planner reads from the data's image files: their median side and the seconds to decode one."""
from __future__ import annotations

import time

import numpy as np


def _image_files(data) -> list:
    """The data's training image files (folder data), or [] (TFDS data has none)."""
    return list((getattr(data, "files", None) or {}).get("paths", []))


def images_side(data) -> int | None:
    """Median short side of (up to 64 of) the data's image files, or None without files."""
    files = _image_files(data)
    if not files:
        return None
    from PIL import Image
    step = max(1, len(files) // 64)
    sides = []
    for f in files[::step][:64]:
        try:
            with Image.open(f) as im:
                sides.append(min(im.size))
        except OSError:
            continue
    return int(np.median(sides)) if sides else None


def decode_seconds(data, limit: int = 16) -> float:
    """Seconds to read, decode and resize one of the data's image files (0 without files)."""
    import tensorflow as tf
    files = _image_files(data)[:limit]
    if not files:
        return 0.0
    start = time.perf_counter()
    for f in files:
        image = tf.io.decode_image(tf.io.read_file(str(f)), channels=3, expand_animations=False)
        tf.image.resize(image, (data.image_size, data.image_size)).numpy()
    return (time.perf_counter() - start) / len(files)
