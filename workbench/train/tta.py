"""Test-time augmentation: class probabilities averaged over flipped and cropped views of each image.

Views: the image, four corner crops of CROP of its side, resized back (what
multi-crop evaluation does), and with `flip` the horizontal mirror of each.
Flip only when training flipped too: a model that never saw mirrored digits
or text should not be asked about them.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from workbench.models.contract import classifier, probabilities

CROP = 0.875


def views(images: tf.Tensor, flip: bool) -> list[tf.Tensor]:
    """The test-time views of a batch of square images, all at the batch's size."""
    size = int(images.shape[1])
    side = max(1, int(round(size * CROP)))
    out = [images]
    for top, left in ((0, 0), (0, size - side), (size - side, 0), (size - side, size - side)):
        crop = images[:, top:top + side, left:left + side]
        out.append(tf.image.resize(crop, [size, size]))
    if flip:
        out += [tf.image.flip_left_right(v) for v in out]
    return out


def check_model(model) -> None:
    if classifier(model) is None:
        raise ValueError(f"tta=True averages class probabilities, but model '{model.name}' has no "
                         f"classifier head: build it with include_top=True (wb.regnet(..., num_classes=N)).")


def tta_accuracy(model, dataset: tf.data.Dataset, flip: bool) -> dict:
    """{"val_accuracy": plain, "tta_val_accuracy": averaged over views, "tta_views": n} on (images, labels)."""
    check_model(model)
    predict = tf.function(lambda x: probabilities(model, model(x, training=False)), reduce_retracing=True)
    plain, averaged, labels, n_views = [], [], [], 0
    for x, y in dataset:
        x = tf.cast(x, tf.float32)
        probs = [predict(v).numpy() for v in views(x, flip)]
        n_views = len(probs)
        plain.append(probs[0].argmax(-1))
        averaged.append(np.mean(probs, axis=0).argmax(-1))
        labels.append(np.asarray(y).reshape(len(probs[0]), -1).argmax(-1) if np.ndim(y) == 2 else np.asarray(y))
    y = np.concatenate(labels)
    return {"val_accuracy": float(np.mean(np.concatenate(plain) == y)),
            "tta_val_accuracy": float(np.mean(np.concatenate(averaged) == y)), "tta_views": n_views}
