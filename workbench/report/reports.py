"""Reports of a fine-tuning run: curves, confusion matrix, per-class metrics, top losses.

Every `plot_*` returns a matplotlib Figure and saves it when `path=` is given.
`write_report` puts the lot, plus `metrics.json`, into a run's output folder.
"""

from __future__ import annotations

import heapq
import json
import math
from pathlib import Path

import numpy as np

from workbench.data.pipeline import class_indices
from workbench.models.contract import outputs_logits
from workbench.report import classes, multilabel
from workbench.report.gradcam import overlay_heatmap, report_heatmaps
from workbench.utils.figures import finish, plt

__all__ = ["confusion_matrix", "per_class_metrics", "plot_confusion_matrix", "plot_lr_schedule",
           "plot_top_losses", "plot_training_curves", "predict_dataset", "write_report"]

_EPS = 1e-7  # Keras' probability clip in cross-entropy


# ---------------------------------------------------------------------------- predictions

def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _collect(model, dataset, top_n=0):
    """(y_true, y_prob, top) over a dataset; `top` = the `top_n` highest-loss (loss, image, label, prob)."""
    dataset = getattr(dataset, "val", dataset)
    logits = outputs_logits(model)
    ys, probs, heap, seen = [], [], [], 0
    for x, y in dataset:
        p = np.asarray(model.predict_on_batch(x), dtype="float64")
        if logits:
            p = _softmax(p)
        y = np.asarray(y).reshape(-1).astype("int64")
        ys.append(y)
        probs.append(p)
        if top_n:
            losses = -np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))
            images = None
            for i in np.argsort(-losses)[:top_n]:
                item = (float(losses[i]), seen + int(i))
                if len(heap) < top_n or item > heap[0][:2]:
                    if images is None:
                        images = np.asarray(x)
                    entry = item + (np.clip(images[i], 0, 255).astype("uint8"), int(y[i]), p[i])
                    (heapq.heappush if len(heap) < top_n else heapq.heapreplace)(heap, entry)
        seen += len(y)
    if not ys:
        raise ValueError("The validation dataset is empty: nothing to evaluate.")
    top = sorted(heap, key=lambda e: -e[0])
    return np.concatenate(ys), np.concatenate(probs), top


def predict_dataset(model, dataset):
    """(y_true, y_prob) for a dataset of (images, labels) (or `data.val`); probabilities even for logit models."""
    y_true, y_prob, _ = _collect(model, dataset)
    return y_true, y_prob


# ---------------------------------------------------------------------------- metrics

def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts `cm[actual, predicted]`; `y_pred` may be labels or probabilities."""
    t, p = class_indices(y_true), class_indices(y_pred)
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} labels but y_pred has {len(p)}.")
    k = num_classes or int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    cm = np.zeros((k, k), dtype="int64")
    np.add.at(cm, (t, p), 1)
    return cm


def per_class_metrics(y_true, y_pred, class_names) -> dict:
    """{class: {precision, recall, f1, support}} (0.0 where undefined, like sklearn's zero_division=0)."""
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    out = {}
    for i, name in enumerate(class_names):
        tp, predicted, support = cm[i, i], cm[:, i].sum(), cm[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[str(name)] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                          "support": int(support)}
    return out


# ---------------------------------------------------------------------------- pictures

def _history_of(obj) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    history = getattr(obj, "history", None)  # FinetuneResult or keras.callbacks.History
    if isinstance(history, dict):
        return history
    if history is not None and isinstance(getattr(history, "history", None), dict):
        return history.history
    raise ValueError(f"Expected a history dict, a keras History or a FinetuneResult, got {type(obj).__name__}.")


def _accuracy_key(history: dict):
    for key in ("accuracy", "acc", "sparse_categorical_accuracy", "map"):
        if key in history:
            return key
    return next((k for k in history if "acc" in k and not k.startswith("val_")), None)


def _event_label(stages) -> str:
    if isinstance(stages, str):
        return stages
    return "+".join(str(s) for s in stages)


def _draw_events(ax, events, top=True):
    """A vertical line before each unfreeze epoch (0-based, shown between epochs e and e+1)."""
    for event in events or []:
        x = int(event["epoch"]) + 0.5
        ax.axvline(x, color="0.4", ls="--", lw=1)
        if top:
            ax.annotate(f"unfreeze {_event_label(event.get('stages', []))}", (x, 1.0),
                        xycoords=("data", "axes fraction"), xytext=(3, -3), textcoords="offset points",
                        rotation=90, va="top", ha="left", fontsize=8, color="0.3")


def plot_training_curves(history_or_result, events=None, path=None):
    """Loss and accuracy (train and val) per epoch, unfreeze events as labelled vertical lines."""
    history = _history_of(history_or_result)
    if events is None:
        events = getattr(history_or_result, "events", None)
    acc = _accuracy_key(history)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (("loss", "loss", axes[0]), (acc, "mAP" if acc == "map" else "accuracy", axes[1]))
    for key, title, ax in panels:
        drawn = False
        for name, style in ((key, "o-"), (f"val_{key}" if key else None, "s-")):
            values = history.get(name) if name else None
            if not values:
                continue
            values = np.asarray(values, dtype="float64")
            epochs = np.arange(1, len(values) + 1)
            ax.plot(epochs, values, style, ms=4, label=("val" if name.startswith("val_") else "train"))
            drawn = True
            if key == acc and name.startswith("val_") and np.isfinite(values).any():
                best = int(np.nanargmax(values))
                ax.plot(epochs[best], values[best], "*", ms=14, color="gold", mec="k",
                        label=f"best val {values[best]:.3f} (epoch {best + 1})")
        if not drawn:
            ax.text(0.5, 0.5, f"no {title} recorded", ha="center", va="center", transform=ax.transAxes)
        if key == acc and drawn:
            ax.set_ylim(-0.02, 1.02)
        _draw_events(ax, events)
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        n = max((len(v) for v in history.values() if hasattr(v, "__len__")), default=0)
        if 0 < n <= 20:
            ax.set_xticks(range(1, n + 1))
        if n:
            ax.set_xlim(0.3, n + 0.7)
        if drawn:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("Training curves" + (" (dashed: stages unfrozen)" if events else ""))
    return finish(fig, path)


def plot_confusion_matrix(y_true, y_pred, class_names, path=None, normalize=True):
    """Actual (rows) vs predicted (columns); cells show the count and the percent of the row."""
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    shown = frac if normalize else cm
    size = min(max(4.5, 0.55 * k + 2.5), 20)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(cm.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of the actual class" if normalize else "images")
    ax.set_xticks(range(k), class_names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if k <= 25:
        fontsize = 10 if k <= 8 else 7
        for i in range(k):
            for j in range(k):
                text = f"{cm[i, j]}\n{100 * frac[i, j]:.0f}%" if k <= 12 else f"{cm[i, j]}"
                dark = (frac[i, j] if normalize else cm[i, j] / max(cm.max(), 1)) > 0.55
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black")
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"Confusion matrix: {cm.sum()} images, accuracy {accuracy:.1%}")
    return finish(fig, path)


def _plot_top(top, class_names, path=None, model=None):
    """The top-loss grid; with `model`, each image under its Grad-CAM for the predicted class."""
    n = len(top)
    heatmaps, note = report_heatmaps(model, [entry[2] for entry in top])
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, (loss, _, image, label, prob)) in enumerate(zip(axes.flat, top)):
        pred = int(np.argmax(prob))
        ax.imshow(image if heatmaps is None else overlay_heatmap(image, heatmaps[k]))
        ax.set_title(f"{class_names[pred]} / {class_names[label]}\n{loss:.2f} / {prob[pred]:.2f}",
                     fontsize=9, color="C3" if pred != label else "C2")
    if not top:
        axes.flat[0].text(0.5, 0.5, "no validation images", ha="center", va="center")
    shown = "\nheat: Grad-CAM of the predicted class" if heatmaps is not None else (f"\n{note}" if note else "")
    fig.suptitle(f"Top losses: predicted / actual, loss / probability of the prediction{shown}")
    return finish(fig, path)


def plot_top_losses(model, data, n: int = 9, path=None, gradcam: bool = True):
    """Grid of the `n` validation images with the highest loss, titled pred / actual / loss / prob (multi-label
    data: the labels missed and added at thresholds chosen on these images).

    gradcam: draw each image under the Grad-CAM heatmap of its predicted class (`wb.explain`; single-label).
    """
    class_names = getattr(data, "class_names", None)
    if getattr(data, "multi_label", False):
        return multilabel.evaluate(model, data.val, class_names, top_n=n)[1]["top_losses.png"](path)
    _, y_prob, top = _collect(model, data, top_n=n)
    if class_names is None:
        class_names = [str(i) for i in range(y_prob.shape[1])]
    return _plot_top(top, class_names, path, model if gradcam else None)


def plot_lr_schedule(schedule_or_lrs, steps=None, path=None, xlabel=None, events=None):
    """Learning rate vs step for a schedule (over `steps`, default its `total_steps`), or a list of rates."""
    import keras

    values = schedule_or_lrs
    if isinstance(values, keras.optimizers.Optimizer):
        values = getattr(values, "inner_optimizer", values)  # DiscriminativeOptimizer wraps one
        values = values._learning_rate  # the schedule (or rate) the optimizer was built with
    if isinstance(values, keras.optimizers.schedules.LearningRateSchedule):
        steps = steps or getattr(values, "total_steps", None) or getattr(values, "decay_steps", None)
        if not steps:
            raise ValueError("Pass steps= to plot a schedule without total_steps.")
        name = type(values).__name__
        lrs = np.asarray(values(np.arange(int(steps))), dtype="float64").reshape(-1)
        xlabel = xlabel or "step"
        x = np.arange(len(lrs))
    else:
        name = None
        if isinstance(values, (int, float)):
            lrs = np.full(int(steps or 1), float(values))
        else:
            lrs = np.asarray([float(np.asarray(v)) for v in values], dtype="float64")
        xlabel = xlabel or "step"
        x = np.arange(1, len(lrs) + 1) if xlabel == "epoch" else np.arange(len(lrs))
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    if len(lrs):
        ax.plot(x, lrs, "o-" if len(lrs) <= 30 else "-", ms=4)
        peak = int(np.argmax(lrs))
        ax.annotate(f"max {lrs[peak]:.3g}", (x[peak], lrs[peak]), xytext=(5, -12),
                    textcoords="offset points", fontsize=8)
    _draw_events(ax, events)
    ax.set_ylim(bottom=0)
    if xlabel == "epoch" and 0 < len(lrs) <= 20:
        ax.set_xticks(x)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("learning rate")
    ax.set_title(f"Learning-rate schedule{f': {name}' if name else ''}")
    ax.grid(True, alpha=0.3)
    return finish(fig, path)


# ---------------------------------------------------------------------------- the report

def _json_safe(value):
    """Plain JSON types: numpy scalars/arrays unwrapped, NaN/inf -> None, keys as strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "numpy"):  # tf / keras tensors and variables
        return _json_safe(np.asarray(value.numpy()))
    return str(value)


def _single_label(model, dataset, class_names, gradcam: bool = True) -> tuple[dict, dict]:
    """(metrics, {picture file: draw(path)}) of a single-label model on `dataset`."""
    y_true, y_prob, top = _collect(model, dataset, top_n=9)
    y_pred = y_prob.argmax(axis=-1)
    per_class = per_class_metrics(y_true, y_pred, class_names)
    metrics = {"task": "single_label", "val_accuracy": float(np.mean(y_pred == y_true)),
               "val_loss": float(np.mean(-np.log(np.clip(y_prob[np.arange(len(y_true)), y_true], _EPS, 1.0)))),
               "macro_f1": float(np.mean([m["f1"] for m in per_class.values()])), "num_val": int(len(y_true)),
               "per_class": per_class, "confusion_matrix": confusion_matrix(y_true, y_pred, len(class_names))}
    figures = {"confusion_matrix.png": lambda p: plot_confusion_matrix(y_true, y_pred, class_names, path=p),
               "top_losses.png": lambda p: _plot_top(top, class_names, path=p, model=model if gradcam else None)}
    return metrics, figures


def write_report(model, data, result, output_dir, variant, extra=None, gradcam: bool = True) -> dict:
    """Evaluate on `data.val` and write metrics.json and the report pictures into `output_dir`.

    Writes `metrics.json`, `training_curves.png`, `confusion_matrix.png` (multi-label data:
    `per_class_ap.png`, and the per-class thresholds in metrics.json), `top_losses.png` and
    `lr_schedule.png` (when the history has `lr`); returns the metrics. `result` is the
    fine-tuning result (or a history dict / keras History, or None). The model is not saved here.
    `gradcam`: top_losses.png shows each image under its Grad-CAM heatmap (`wb.explain`).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = [str(c) for c in data.class_names]
    if getattr(data, "multi_label", False):
        task, figures = multilabel.evaluate(model, data.val, class_names)
    else:
        task, figures = _single_label(model, data.val, class_names, gradcam)
    history = {k: [float(np.asarray(v)) for v in vals] for k, vals in _history_of(result).items()}
    events = getattr(result, "events", None) or []
    epochs_run = getattr(result, "epochs_run", None)
    if epochs_run is None:
        epochs_run = max((len(v) for v in history.values()), default=0)
    metrics = {
        "variant": variant,
        **task,
        "epochs_run": int(epochs_run),
        "best_epoch": getattr(result, "best_epoch", None),
        "best_val_accuracy": getattr(result, "best_val_accuracy", None),
        "class_names": class_names,
        "num_train": getattr(data, "num_train", None),
        "events": events,
        "history": history,
    }
    if hasattr(data, "val_counts"):
        metrics["class_counts"], metrics["notes"] = classes.class_counts(data), classes.unreliable(data.val_counts)
    for key in ("feature_cache_speedup", "precision", "strategy"):  # what the run used, when known
        if getattr(result, key, None) is not None:
            metrics[key] = getattr(result, key)
    for key in ("policy", "evaluation", "progressive", "precision_choice"):  # what finetune's policy did
        value = getattr(result, key, None)
        if value:
            metrics["training_policy" if key == "policy" else key] = value
    if getattr(result, "epoch_seconds", None):  # the epochs run in this process (after a resume: the rest)
        metrics["train_seconds"] = sum(result.epoch_seconds.values())
    if getattr(result, "evaluation", None):
        metrics["tta_val_accuracy"] = result.evaluation["tta_val_accuracy"]
    metrics.update(extra or {})
    metrics = _json_safe(metrics)

    figures = {"training_curves.png": lambda p: plot_training_curves(history, events=events, path=p), **figures}
    if history.get("lr"):
        figures["lr_schedule.png"] = lambda p: plot_lr_schedule(history["lr"], path=p, xlabel="epoch",
                                                                events=events)
    for name, draw in figures.items():
        plt.close(draw(out / name))
    metrics["files"] = sorted(["metrics.json", *figures])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics
