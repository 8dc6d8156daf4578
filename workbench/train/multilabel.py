"""Multi-label training and its figures: sigmoid outputs, binary cross-entropy, thresholds, AP and F1.

A multi-label model ends in a sigmoid (or logits) per class; it trains on
multi-hot rows with binary cross-entropy (label smoothing pulls targets to
0.5; class weights weigh each class's positives) and is monitored by its mean
average precision (`val_map`, Keras' PR-AUC per class, averaged). After
training, one decision threshold per class is chosen on the validation set
(the one that maximizes that class's F1); `average_precision`, `f1_scores`
and `choose_thresholds` are exact numpy versions for the report.
"""
from __future__ import annotations

import keras
import numpy as np

from workbench.models.contract import output_activation, outputs_logits

MONITOR = "val_map"


def is_multi_label(data) -> bool:
    return bool(getattr(data, "multi_label", False))


def check_model(model, tta: bool) -> None:
    """Refuse a softmax head (its classes compete) and test-time augmentation (it reports accuracy)."""
    if output_activation(model) not in ("sigmoid", "linear"):
        raise ValueError(f"The data is multi-label but model '{model.name}' ends in a softmax, which makes its "
                         "classes compete: build it with wb.regnet(..., classifier_activation='sigmoid').")
    if tta:
        raise ValueError("tta=True reports single-label accuracy averaged over views; it is not defined for "
                         "multi-label data: leave tta off.")


@keras.saving.register_keras_serializable(package="workbench")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy averaged over classes, each class's positive term times `pos_weight[c]`."""

    def __init__(self, pos_weight, label_smoothing=0.0, from_logits=False, name="weighted_binary_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(w) for w in pos_weight]
        self.label_smoothing, self.from_logits = float(label_smoothing), bool(from_logits)

    def call(self, y_true, y_pred):
        ops = keras.ops
        y = ops.cast(y_true, y_pred.dtype) * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        if self.from_logits:
            log_p, log_q = ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
        else:
            p = ops.clip(y_pred, 1e-7, 1 - 1e-7)
            log_p, log_q = ops.log(p), ops.log(1 - p)
        w = ops.cast(ops.convert_to_tensor(self.pos_weight), y_pred.dtype)
        return -ops.mean(w * y * log_p + (1 - y) * log_q, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight, "label_smoothing": self.label_smoothing,
                "from_logits": self.from_logits}


def loss_and_metrics(model, data, label_smoothing: float, class_weights: dict | None):
    """(loss, metrics) to compile a multi-label model with: BCE (weighted per class when `class_weights`,
    {index: positive weight}) and mAP named "map"."""
    logits = outputs_logits(model)
    if class_weights:
        weights = [class_weights.get(i, 1.0) for i in range(data.num_classes)]
        loss = WeightedBinaryCrossentropy(weights, label_smoothing, from_logits=logits)
    else:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, from_logits=logits)
    mean_ap = keras.metrics.AUC(curve="PR", multi_label=True, num_labels=data.num_classes, from_logits=logits,
                                name="map")
    return loss, [mean_ap]


# ---------------------------------------------------------------- exact figures (numpy)

def average_precision(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class average precision (sklearn's definition: precision at each positive, averaged); NaN for a
    class without positives."""
    y_true, scores = np.asarray(y_true) > 0.5, np.asarray(scores, dtype="float64")
    out = np.full(y_true.shape[1], np.nan)
    for c in range(y_true.shape[1]):
        ranked = _cuts(y_true[:, c], scores[:, c])
        if ranked is not None:
            _, kept, tp, positives = ranked
            out[c] = float(np.sum(np.diff(np.r_[0.0, tp / positives]) * tp / kept))
    return out


def _cuts(y, s):
    """Every cut of one class's scores, highest first: (scores sorted, images kept, true positives kept,
    positives) at each distinct score; None without positives."""
    positives = int(y.sum())
    if not positives:
        return None
    order = np.argsort(-s, kind="stable")
    s, hits = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last image of each distinct score
    return s, last + 1, np.cumsum(hits)[last], positives


def _f1(tp, fp, fn):
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(np.shape(tp), "float64"), where=denominator > 0)


def f1_scores(y_true: np.ndarray, predicted: np.ndarray) -> dict:
    """{"micro_f1", "macro_f1", "per_class": [f1 ...]} of 0/1 predictions."""
    y, pred = np.asarray(y_true) > 0.5, np.asarray(predicted) > 0.5
    tp, fp, fn = (y & pred).sum(0), (~y & pred).sum(0), (y & ~pred).sum(0)
    per_class = _f1(tp, fp, fn)
    return {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())), "macro_f1": float(per_class.mean()),
            "per_class": per_class.tolist()}


def choose_thresholds(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class threshold maximizing that class's F1 on (`y_true`, `scores`): midway between the lowest
    score kept positive and the next one below; 0.5 for a class without positives."""
    y_true, scores = np.asarray(y_true) > 0.5, np.asarray(scores, dtype="float64")
    out = np.full(y_true.shape[1], 0.5)
    for c in range(y_true.shape[1]):
        ranked = _cuts(y_true[:, c], scores[:, c])
        if ranked is None:
            continue
        s, kept, tp, positives = ranked
        best = int(np.argmax(_f1(tp, kept - tp, positives - tp)))
        below = s[kept[best]] if kept[best] < len(s) else 0.0
        out[c] = float((s[kept[best] - 1] + below) / 2)
    return out


def predict_sets(scores: np.ndarray, thresholds) -> np.ndarray:
    """0/1 predictions: each class's score at or above its threshold."""
    return (np.asarray(scores) >= np.asarray(thresholds, dtype="float64")).astype("int64")
