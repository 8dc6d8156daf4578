"""Progressive resizing: the early epochs on smaller images, the last ones at full size.

RegNets are fully convolutional, so the same weights train at any size; a
model built for one input size is run at others through `flexible(model)`, a
twin sharing every layer. `phases(epochs, size)` plans the sizes: the first
40% of the epochs at 5/8 of the side, the next 30% at 13/16, the rest at full
size (fastai's and timm's practice: a few cheap epochs, then the real size
so that the model ends calibrated for it).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from workbench.utils import checks

PLAN = ((0.4, 0.625), (0.3, 0.8125))  # (fraction of epochs, fraction of the side) before full size
MULTIPLE = 8


def phases(epochs: int, image_size: int) -> list[tuple[int, int, int]]:
    """[(first epoch, end epoch, side), ...] covering 0..epochs, sides rising to `image_size`."""
    out, start = [], 0
    for share, scale in PLAN:
        n = int(round(share * epochs))
        side = max(checks.MIN_IMAGE_SIZE, int(round(image_size * scale / MULTIPLE)) * MULTIPLE)
        if n and side < image_size and start + n < epochs:
            out.append((start, start + n, side))
            start += n
    out.append((start, epochs, image_size))
    return out


def flexible(model: keras.Model) -> keras.Model:
    """A twin of `model` that takes images of any size, sharing its layers (and so its weights)."""
    inputs = keras.Input((None, None, model.inputs[0].shape[-1]), name=model.inputs[0].name)
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer)


def resized(dataset: tf.data.Dataset, side: int) -> tf.data.Dataset:
    """Batches of (images, labels) with the images resized to side x side (antialiased)."""
    return dataset.map(lambda x, y: (tf.image.resize(x, [side, side], antialias=True), y),
                       num_parallel_calls=tf.data.AUTOTUNE)


def report(sides: dict, epoch_seconds: dict, image_size) -> dict:
    """{"sides": per epoch, "seconds_saved": estimate} of a run: the small epochs against the median
    full-size epoch; {} without progressive resizing."""
    if not sides:
        return {}
    full = [epoch_seconds[e] for e, s in sides.items() if s == image_size and e in epoch_seconds]
    small = [epoch_seconds[e] for e, s in sides.items() if s != image_size and e in epoch_seconds]
    saved = float(len(small) * np.median(full) - sum(small)) if full and small else None
    return {"sides": [sides[e] for e in sorted(sides)], "seconds_saved": saved}
