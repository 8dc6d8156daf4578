"""Head-only epochs on backbone features computed once.

While every stage below the head is frozen, the backbone maps each image to
the same pooled features every epoch, so one pass computes them and the head
trains on those: the same numbers as training the whole model with the
backbone frozen, at the cost of the head alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from workbench.models.contract import feature_extractor, head_model
from workbench.data.pipeline import seeded_epochs, steps_per_epoch


@dataclass
class CachedFeatures:
    """The head as a model, train/val datasets of its inputs, and what computing them cost."""

    head: keras.Model
    train: tf.data.Dataset
    val: tf.data.Dataset
    seconds: float
    augmentation_off: bool


def extract(model: keras.Model, ds: tf.data.Dataset):
    """One pass of `ds` through `model` in inference mode: (outputs, labels, seconds)."""
    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    outputs, labels = [], []
    t0 = time.perf_counter()
    for x, y in ds:
        outputs.append(fn(x).numpy())
        labels.append(y.numpy())
    return np.concatenate(outputs), np.concatenate(labels), time.perf_counter() - t0


def cache_features(model: keras.Model, data, seed: int, encode, first_epoch: int = 0) -> CachedFeatures | None:
    """Backbone features of data's train and val images, or None when the model's head is not a plain chain.

    Training images come from `data.train_plain` (centre crops, no
    augmentation) when the loader provides it, else from one pass of `data.train`.
    `train` is the endless sequence of epochs from `first_epoch` (see `data.seeded_epochs`).
    """
    head = head_model(model)
    if head is None:
        return None
    backbone = feature_extractor(model)
    plain = getattr(data, "train_plain", None)
    xt, yt, t_train = extract(backbone, plain if plain is not None else data.train)
    xv, yv, t_val = extract(backbone, data.val)
    n, batch = len(xt), data.batch_size
    features = tf.data.Dataset.from_tensor_slices((xt, yt))

    def one_epoch(epoch_seed):
        return features.shuffle(n, seed=epoch_seed, reshuffle_each_iteration=False).batch(batch, drop_remainder=n > batch)

    train = seeded_epochs(one_epoch, seed, first_epoch, steps_per_epoch(n, batch)).map(encode)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(batch).map(encode)
    return CachedFeatures(head, train, val, t_train + t_val, plain is not None)
