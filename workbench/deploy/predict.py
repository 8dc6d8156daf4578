"""`wb.predict`: a trained model on new images, with class names, top-k, what was skipped, a table and a gallery.

    preds = wb.predict("runs/custom/model.keras", "new_photos/", top_k=3)
    preds.frame                      # pandas: file, label, probability, top1, top1_probability, ...
    preds.to_csv("predictions.csv")
    preds.plot(n=16, path="gallery.png")
    preds.skipped                    # [(file, reason)] of the files that could not be read

Images are checked, decoded, resized and centre-cropped by the training
pipeline's own functions (`workbench.data.folders.check_images`,
`unlabeled_batches`), so a run's validation folder predicted here gives the
accuracy the run reported. Class names come from beside the model (the
export's `labels.txt`, or `metrics.json`'s `class_names` of the run up to
three folders above it); `class_names=` overrides them. A multi-label run
(`thresholds.json` beside `labels.txt`, or `"task": "multi_label"` and
`"thresholds"` in `metrics.json`) gives each image its label set: every class
whose sigmoid probability reaches its threshold.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from workbench.data.folders import IMAGE_EXTENSIONS, check_images, image_files, unlabeled_batches
from workbench.data.pipeline import fit_image
from workbench.deploy.runtimes import open_model
from workbench.report.gallery import plot_gallery
from workbench.utils import checks

LABELS, THRESHOLDS, METRICS = "labels.txt", "thresholds.json", "metrics.json"
_RUN_LEVELS = 3  # metrics.json is looked for this many folders up: export/tflite/model.tflite -> the run


@dataclass
class Predictions:
    """The predictions of `wb.predict`: one row per readable image, in `files` order."""

    files: list[str]
    class_names: list[str]
    probabilities: np.ndarray                      # (images, classes): softmax, or sigmoid for multi-label
    top_k: int = 3
    thresholds: dict[str, float] | None = None     # multi-label: {class: threshold}
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images: Callable[[int], np.ndarray] | None = field(default=None, repr=False)  # the first n as fed

    def __len__(self) -> int:
        return len(self.files)

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    @property
    def top_indices(self) -> np.ndarray:
        """(images, k) class indices, most probable first."""
        k = min(self.top_k, self.probabilities.shape[1])
        return np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]

    @property
    def top_classes(self) -> list[list[str]]:
        return [[self.class_names[i] for i in row] for row in self.top_indices]

    @property
    def top_probabilities(self) -> np.ndarray:
        return np.take_along_axis(self.probabilities, self.top_indices, axis=1)

    @property
    def labels(self) -> list[str]:
        """The most probable class of each image."""
        return [self.class_names[i] for i in self.probabilities.argmax(axis=1)]

    @property
    def label_sets(self) -> list[list[str]] | None:
        """Multi-label: the classes of each image whose probability reaches their threshold; else None."""
        if not self.multi_label:
            return None
        limits = np.array([self.thresholds[c] for c in self.class_names])
        return [[c for c, on in zip(self.class_names, row) if on] for row in self.probabilities >= limits]

    def to_frame(self):
        """A pandas DataFrame: file, label, probability, (labels,) top1, top1_probability, ..., topk."""
        import pandas as pd

        columns = {"file": self.files, "label": self.labels,
                   "probability": self.probabilities.max(axis=1)}
        if self.multi_label:
            columns["labels"] = [";".join(s) for s in self.label_sets]
        classes, probs = self.top_classes, self.top_probabilities
        for j in range(probs.shape[1]):
            columns[f"top{j + 1}"] = [row[j] for row in classes]
            columns[f"top{j + 1}_probability"] = probs[:, j]
        return pd.DataFrame(columns)

    @property
    def frame(self):
        return self.to_frame()

    def to_csv(self, path) -> Path:
        """Write `to_frame()` as CSV to `path`; return the path."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_frame().to_csv(path, index=False)
        return path

    def plot(self, n: int = 16, path=None, heatmaps=None):
        """A gallery of the first `n` images as the model saw them, captioned with the prediction.

        `heatmaps` (images, h, w) in [0, 1], in `files` order (e.g. Grad-CAM maps), are drawn over them.
        """
        n = min(checks.positive_int("n", n), len(self))
        shown = self.top_indices[:n, 0]
        if self.multi_label:
            what = [", ".join(s) or "(none)" for s in self.label_sets[:n]]
        else:
            what = [f"{self.class_names[i]} {self.probabilities[r, i]:.2f}" for r, i in enumerate(shown)]
        captions = [f"{w}\n{_short(f)}" for w, f in zip(what, self.files)]
        title = "Predictions" + (" (label sets at the run's thresholds)" if self.multi_label else
                                 ": label and probability")
        return plot_gallery(self.images(n), captions, heatmaps=heatmaps, title=title, path=path)

    def summary(self, rows: int = 10) -> str:
        """A few lines: how many images, the first predictions, what was skipped and why."""
        lines = [f"{len(self)} image(s) classified" + (f", {len(self.skipped)} skipped" if self.skipped else "")]
        lines.append(self.to_frame().head(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if len(self) > rows:
            lines.append(f"... and {len(self) - rows} more")
        lines += [f"skipped {f}: {why}" for f, why in self.skipped]
        return "\n".join(lines)


def _short(file: str, width: int = 24) -> str:
    name = os.path.basename(file) or file
    return name if len(name) <= width else "…" + name[-width + 1:]


def predict(model, images, top_k: int = 3, batch_size: int = 32, class_names=None, thresholds=None,
            precision: str = "float32", verbose: bool = False) -> Predictions:
    """Classify `images` with `model`; return `Predictions`.

    `model`: a `keras.Model`, or a path to `model.keras`, an exported SavedModel folder, a `.tflite`
    (float, dynamic-range or int8) or an `.onnx`. `images`: a folder (searched recursively), a list of
    image files, or an array (images, height, width, 3) of 0-255 RGB values (fed as they are when of the
    model's input size, else resized and centre-cropped as the training pipeline does).
    `class_names` and `thresholds` ({class: threshold}, multi-label) override what the model's folder says.
    `precision="mixed_bfloat16"` runs a Keras model in bf16 with its BatchNorms folded into the
    convolutions (fast on CPUs with native bf16, docs/speed.md "Precision"; bf16 moves probabilities by ~0.02).
    """
    checks.positive_int("top_k", top_k)
    checks.positive_int("batch_size", batch_size)
    runtime = open_model(model, precision)
    found_names, found_thresholds = run_labels(runtime.path)
    files, batches, images_of, skipped = _image_source(images, runtime.size, batch_size)
    outputs = runtime.outputs(batches)
    names = _class_names(class_names if class_names is not None else found_names, outputs.shape[1], runtime)
    limits = _thresholds(thresholds if thresholds is not None else found_thresholds, names)
    probs = outputs.astype(np.float32)
    if runtime.logits:
        probs = tf.sigmoid(probs).numpy() if limits is not None else tf.nn.softmax(probs, axis=-1).numpy()
    result = Predictions(files, names, probs, top_k, limits, skipped, images_of)
    if verbose:
        print(result.summary())
    return result


# ---------------------------------------------------------------- images

def _image_source(images, size, batch_size):
    """(names, dataset of float32 batches, first-n images function, skipped) for `images`."""
    if isinstance(images, (np.ndarray, tf.Tensor)):
        return _array_source(np.asarray(images), size, batch_size)
    if isinstance(images, (str, os.PathLike)):
        root = Path(images).expanduser()
        if root.is_dir():
            files = image_files(root)
            if not files:
                raise ValueError(f"Folder '{root}' has no image files (extensions {', '.join(IMAGE_EXTENSIONS)}, "
                                 "searched recursively): point images at a folder of photos.")
        elif root.is_file():
            files = [root]
        else:
            raise FileNotFoundError(f"Images '{root}' do not exist: pass a folder, a list of image files "
                                    "or an array.")
    else:
        files = [Path(f).expanduser() for f in images]
        if not files:
            raise ValueError("The list of images is empty: pass a folder, image files or an array.")
    names, feed, skipped = check_images(files, size[0])
    if not names:
        reasons = "; ".join(f"{f}: {why}" for f, why in skipped[:3])
        raise ValueError(f"None of the {len(skipped)} image file(s) could be read ({reasons}). "
                         "Check that they are JPEG, PNG, BMP, GIF or WebP images.")

    def batches_of(paths, n):
        return unlabeled_batches(paths, size[0], n).map(lambda x, _: x)

    def first(n):
        return next(iter(batches_of(feed[:n], n))).numpy()

    return names, batches_of(feed, batch_size), first, skipped


def _array_source(array, size, batch_size):
    if array.ndim != 4 or array.shape[-1] != 3 or not len(array):
        raise ValueError(f"An array of images must be shaped (images, height, width, 3) with RGB values "
                         f"0-255; got shape {array.shape}.")
    ds = tf.data.Dataset.from_tensor_slices(array.astype(np.float32))
    if tuple(array.shape[1:3]) != tuple(size):
        ds = ds.map(lambda x: fit_image(x, size[0]), num_parallel_calls=tf.data.AUTOTUNE)
    batches = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    names = [f"images[{i}]" for i in range(len(array))]
    return names, batches, lambda n: np.concatenate(list(ds.take(n).batch(n).as_numpy_iterator())), []


# ---------------------------------------------------------------- class names and thresholds

def run_labels(path) -> tuple[list[str] | None, dict | None]:
    """(class names, multi-label thresholds) from beside a model file or folder, or (None, None).

    Looks for the export's labels (`<stem>_labels.txt` or `labels.txt` beside a file; `assets/labels.txt`
    in a SavedModel) with `thresholds.json` in the same folder, then for the run's `metrics.json`
    (`class_names`; `thresholds` when its `task` is "multi_label") in the model's folder and up to
    two folders above.
    """
    if path is None:
        return None, None
    path = Path(path)
    beside = [path / "assets" / LABELS, path / LABELS] if path.is_dir() else [
        path.with_name(path.stem + "_labels.txt"), path.with_name(LABELS)]
    labels = next((f for f in beside if f.is_file()), None)
    names = thresholds = None
    if labels is not None:
        names = [line.strip() for line in labels.read_text().splitlines() if line.strip()]
        if (labels.parent / THRESHOLDS).is_file():
            thresholds = json.loads((labels.parent / THRESHOLDS).read_text())
    folders = ([path] if path.is_dir() else []) + list(path.parents)[:_RUN_LEVELS]
    metrics = next((f / METRICS for f in folders if (f / METRICS).is_file()), None)
    if metrics is not None and (names is None or thresholds is None):
        run = json.loads(metrics.read_text())
        names = names or run.get("class_names")
        if thresholds is None and run.get("task") == "multi_label":
            thresholds = run.get("thresholds")
    return names, thresholds


def _class_names(names, outputs: int, runtime) -> list[str]:
    if names is None:
        where = f"beside '{runtime.path}'" if runtime.path else "for an in-memory model"
        warnings.warn(f"No class names found {where} (labels.txt or metrics.json): classes are numbered "
                      "0, 1, ...; pass class_names= to name them.", stacklevel=3)
        return [str(i) for i in range(outputs)]
    names = [str(n) for n in names]
    if len(names) != outputs:
        raise ValueError(f"{len(names)} class names ({', '.join(names[:5])}...) but the model outputs {outputs} "
                         "classes: the labels do not belong to this model.")
    return names


def _thresholds(thresholds, names) -> dict[str, float] | None:
    if thresholds is None:
        return None
    missing = [c for c in names if c not in thresholds]
    if missing:
        raise ValueError(f"thresholds has no value for the class(es) {missing}: give one per class "
                         f"({', '.join(names)}).")
    return {c: float(thresholds[c]) for c in names}
