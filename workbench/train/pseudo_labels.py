"""Pseudo-labels for noisy-student training: which unlabelled images to keep, and the predictions behind them."""
from __future__ import annotations

import hashlib

import keras
import numpy as np
import tensorflow as tf

from workbench.models.contract import feature_extractor, head_model, probabilities
from workbench.train.tta import views


def select(probs: np.ndarray, threshold: float, balance: bool) -> np.ndarray:
    """Indices of the pseudo-labelled images to train on (with repeats when balancing).

    Images whose top probability is below `threshold` are dropped; with
    `balance`, every class that kept any is brought to the mean count over
    those classes: its most confident images when it has more, its own images
    repeated when it has fewer (the paper's duplicate-or-trim).
    """
    confidence, top = probs.max(-1), probs.argmax(-1)
    per_class = [np.flatnonzero((top == c) & (confidence >= threshold)) for c in range(probs.shape[1])]
    per_class = [idx[np.argsort(-confidence[idx], kind="stable")] for idx in per_class]
    if not balance:
        return np.sort(np.concatenate(per_class)).astype(np.int64)
    present = [len(idx) for idx in per_class if len(idx)]
    if not present:
        return np.zeros(0, np.int64)
    target = int(round(np.mean(present)))
    return np.concatenate([np.resize(idx, target) for idx in per_class if len(idx)]).astype(np.int64)


class Predictor:
    """Class probabilities of a model on a dataset (averaged over test-time views), reusing the backbone
    features of earlier passes whose backbone weights were the same."""

    def __init__(self):
        self.features: dict[tuple, np.ndarray] = {}
        self._parts: dict[int, tuple] = {}

    def _split(self, model):
        """(model, backbone, head or None, fingerprint of the backbone weights), made once per model."""
        if id(model) not in self._parts:
            backbone, head = feature_extractor(model), head_model(model)
            digest = hashlib.sha1()
            for w in backbone.weights:
                digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
            self._parts[id(model)] = (model, backbone, head, digest.hexdigest())
        return self._parts[id(model)][1:]

    @staticmethod
    def _outputs(net, dataset, tta: bool, flip: bool) -> np.ndarray:
        """(views, images, ...) outputs of `net`; a short last batch is padded, so one trace serves all."""
        outputs, size = [], None
        for x, _ in dataset:
            n = int(x.shape[0])
            size = size or n
            per_view = []
            for v in (views(x, flip) if tta else [x]):
                padded = tf.pad(v, [[0, size - n], [0, 0], [0, 0], [0, 0]]) if n < size else v
                per_view.append(net.predict_on_batch(padded)[:n])
            outputs.append(np.stack(per_view))
        return np.concatenate(outputs, axis=1)

    def __call__(self, model, dataset: tf.data.Dataset, name: str, tta: bool, flip: bool) -> np.ndarray:
        backbone, head, fingerprint = self._split(model)
        if head is None:
            out = self._outputs(model, dataset, tta, flip)
            return np.mean([keras.ops.convert_to_numpy(probabilities(model, o)) for o in out], axis=0)
        key = (fingerprint, name, tta, flip)
        if key not in self.features:
            self.features[key] = self._outputs(backbone, dataset, tta, flip)
        return np.mean([keras.ops.convert_to_numpy(probabilities(model, head(f, training=False)))
                        for f in self.features[key]], axis=0)
