"""BatchNorm re-estimation: moving statistics recomputed from training images before evaluation.

BatchNorm normalizes training batches with their own statistics and
inference with moving averages. When the weights move fast (training from
scratch) or training images differ from validation images (random crops),
the averages describe a network that no longer exists, and validation
accuracy sits near chance while training accuracy climbs.
`refresh_bn_statistics` recomputes them as timm / PyTorch's `update_bn` does:
forward passes in training mode over un-augmented training images, averaging
each trainable BatchNorm layer's batch mean and (biased) variance; frozen
layers keep theirs. `BNRefresh` does it before every evaluation inside `fit`.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

MAX_IMAGES = 128  # per-channel statistics over 128 images x H x W positions; caps the cost per evaluation


class _Probe:
    """The inputs of every BatchNormalization layer of a model, computed in training mode."""

    def __init__(self, model: keras.Model):
        self.layers = [layer for layer in model._flatten_layers(include_self=False)
                       if isinstance(layer, keras.layers.BatchNormalization)]
        # node 0: the layer's call in `model` itself (a progressive-resizing twin calls it again)
        inputs = [layer._inbound_nodes[0].input_tensors[0] for layer in self.layers]
        probe = keras.Model(model.inputs, inputs) if self.layers else None

        def moments(x):
            outs = probe(x, training=True)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            return [tf.nn.moments(tf.cast(o, tf.float32), axes=[0, 1, 2]) for o in outs]

        self.moments = tf.function(moments, reduce_retracing=True)


def refresh_bn_statistics(model: keras.Model, images: tf.data.Dataset, max_images: int = MAX_IMAGES,
                          probe: _Probe | None = None) -> int:
    """Recompute the moving mean and variance of `model`'s trainable BatchNorm layers; returns images used.

    `images`: batches of (images, labels) without augmentation (e.g. `data.train_plain`), a dataset or a list.
    """
    probe = probe or _Probe(model)
    if not probe.layers:
        return 0
    sums, squares, seen = None, None, 0
    for x, _ in images:
        n = int(x.shape[0])
        stats = probe.moments(x)
        means = [m.numpy() for m, _ in stats]
        seconds = [v.numpy() + m * m for m, v in zip(means, (v for _, v in stats))]
        sums = [n * m for m in means] if sums is None else [s + n * m for s, m in zip(sums, means)]
        squares = [n * q for q in seconds] if squares is None else [s + n * q for s, q in zip(squares, seconds)]
        seen += n
        if seen >= max_images:
            break
    if not seen:
        return 0
    for layer, s, q in zip(probe.layers, sums, squares):
        if layer.trainable:
            mean = s / seen
            layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
            layer.moving_variance.assign(np.maximum(q / seen - mean * mean, 0).astype(layer.moving_variance.dtype))
    return seen


class BNRefresh(keras.callbacks.Callback):
    """Before each evaluation in `fit`, re-estimate BatchNorm statistics on `images` (see module doc).

    `model`: the model whose layers to refresh (default: the one being fitted); a twin sharing its
    layers, as progressive resizing fits, refreshes the same statistics.
    """

    def __init__(self, images: tf.data.Dataset, max_images: int = MAX_IMAGES, model=None):
        super().__init__()
        self.images, self.max_images, self.target = images, max_images, model
        self._probe = self._batches = None

    def _first_images(self) -> list:
        """The first `max_images` images, read once and kept: re-reading them every epoch would decode them
        again (tf.data drops a cache that was read only in part, with a warning each time)."""
        if self._batches is None:
            self._batches, seen = [], 0
            for x, y in self.images:
                self._batches.append((x, y))
                seen += int(x.shape[0])
                if seen >= self.max_images:
                    break
        return self._batches

    def on_test_begin(self, logs=None):
        model = self.target or self.model
        if self._probe is None:
            self._probe = _Probe(model)
        refresh_bn_statistics(model, self._first_images(), self.max_images, self._probe)
