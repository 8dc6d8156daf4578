"""The report of a multi-label run: thresholds chosen on validation, mAP and F1, its two pictures.

`evaluate` gives what `write_report` puts in `metrics.json` ("task":
"multi_label", "thresholds" {class: float}, "map", "micro_f1", "macro_f1",
per-class AP / precision / recall / F1 at the thresholds) and the pictures
drawn instead of the single-label ones: `per_class_ap.png` (AP, precision and
recall per class) and `top_losses.png` (labels missed and added).
"""
from __future__ import annotations

import math

import numpy as np

from workbench.models.contract import outputs_logits
from workbench.train.multilabel import average_precision, choose_thresholds, f1_scores, predict_sets
from workbench.utils.figures import finish, plt

_EPS = 1e-7


def scores_of(model, dataset, top_n: int = 0):
    """(multi-hot truth, sigmoid scores, the `top_n` highest-loss (loss, image, truth, scores)) of a dataset."""
    logits = outputs_logits(model)
    truth, scores, top = [], [], []
    for x, y in dataset:
        p = np.asarray(model.predict_on_batch(x), dtype="float64")
        p = 1 / (1 + np.exp(-p)) if logits else p
        y = np.asarray(y, dtype="float64")
        truth.append(y)
        scores.append(p)
        if top_n:
            q = np.clip(p, _EPS, 1 - _EPS)
            losses = -(y * np.log(q) + (1 - y) * np.log(1 - q)).sum(1)
            top += [(float(losses[i]), np.clip(np.asarray(x[i]), 0, 255).astype("uint8"), y[i], p[i])
                    for i in np.argsort(-losses)[:top_n]]
            top = sorted(top, key=lambda e: -e[0])[:top_n]
    if not truth:
        raise ValueError("The validation dataset is empty: nothing to evaluate.")
    return np.concatenate(truth), np.concatenate(scores), top


def evaluate(model, dataset, class_names, top_n: int = 9) -> tuple[dict, dict]:
    """(metrics, {picture file: draw(path)}) of a multi-label model on `dataset` (e.g. `data.val`)."""
    y, p, top = scores_of(model, dataset, top_n)
    thresholds = choose_thresholds(y, p)
    predicted = predict_sets(p, thresholds)
    ap = average_precision(y, p)
    f1 = f1_scores(y, predicted)
    at_half = f1_scores(y, predict_sets(p, np.full(len(class_names), 0.5)))
    per_class = {}
    for c, name in enumerate(class_names):
        tp, kept, support = int((predicted[:, c] * y[:, c]).sum()), int(predicted[:, c].sum()), int(y[:, c].sum())
        per_class[name] = {"ap": ap[c], "precision": tp / kept if kept else 0.0,
                           "recall": tp / support if support else 0.0, "f1": f1["per_class"][c],
                           "threshold": thresholds[c], "support": support}
    q = np.clip(p, _EPS, 1 - _EPS)
    metrics = {"task": "multi_label", "thresholds": dict(zip(class_names, thresholds.tolist())),
               "val_accuracy": float(np.mean((predicted == (y > 0.5)).all(1))),  # every label right
               "val_loss": float(np.mean(-(y * np.log(q) + (1 - y) * np.log(1 - q)))),
               "map": float(np.nanmean(ap)) if np.isfinite(ap).any() else None,
               "micro_f1": f1["micro_f1"], "macro_f1": f1["macro_f1"],
               "macro_f1_at_0.5": at_half["macro_f1"], "num_val": int(len(y)), "per_class": per_class}
    figures = {"per_class_ap.png": lambda path: plot_per_class(per_class, path),
               "top_losses.png": lambda path: plot_top_losses(top, class_names, thresholds, path)}
    return metrics, figures


def plot_per_class(per_class: dict, path=None):
    """Bars of AP, and precision and recall at the chosen thresholds, per class (support under each name)."""
    names = list(per_class)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(names) + 2), 4))
    for k, (key, label) in enumerate((("ap", "AP"), ("precision", "precision"), ("recall", "recall"))):
        values = [per_class[n][key] if per_class[n][key] is not None else np.nan for n in names]
        ax.bar(x + (k - 1) * 0.27, values, 0.27, label=label)
    ax.set_xticks(x, [f"{n}\n(n={per_class[n]['support']})" for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="y", alpha=0.3)
    mean_ap = np.nanmean([per_class[n]["ap"] if per_class[n]["ap"] is not None else np.nan for n in names])
    ax.set_title(f"Per class: AP (mAP {mean_ap:.3f}), precision and recall at the chosen thresholds")
    return finish(fig, path)


def _names(row, class_names) -> str:
    return ", ".join(class_names[i] for i in np.flatnonzero(row)) or "-"


def plot_top_losses(top, class_names, thresholds, path=None):
    """The highest-loss validation images, titled with the labels missed and the labels added."""
    cols = max(1, math.ceil(math.sqrt(len(top))))
    rows = max(1, math.ceil(len(top) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (loss, image, truth, scores) in zip(axes.flat, top):
        predicted, truth = predict_sets(scores, thresholds), truth > 0.5
        missed, added = truth & (predicted == 0), ~truth & (predicted == 1)
        ax.imshow(image)
        ax.set_title(f"missed: {_names(missed, class_names)}\nadded: {_names(added, class_names)}\nloss {loss:.2f}",
                     fontsize=8, color="C3" if missed.any() or added.any() else "C2")
    if not top:
        axes.flat[0].text(0.5, 0.5, "no validation images", ha="center", va="center")
    fig.suptitle("Top losses: labels missed and added at the chosen thresholds")
    return finish(fig, path)
