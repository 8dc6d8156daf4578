"""Image data as tf.data: the `ImageData` both loaders return, decoding, augmentation, splits.

`wb.load_folder` (folders.py) and `wb.load_tfds` (catalog.py) read their
sources into (encoded image bytes, label) datasets; everything after that is
here and shared. Randomness (shuffling, augmentation) depends on the loader's
`seed` alone, not on TensorFlow's global random state, and `ImageData.training(seed, epoch)`
gives training epochs whose order and augmentation depend only on (seed, epoch).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from workbench.data import augment as augmentation
from workbench.utils import checks

_CROP_FRACTION = 0.875
_MEMORY_CACHE_BYTES = 2 << 30
_IMBALANCE_RATIO = 3.0
_AUTOTUNE = tf.data.AUTOTUNE


def cache_root() -> Path:
    """The workbench cache folder ($REGNET_WORKBENCH_CACHE or ~/.cache/regnet-workbench)."""
    root = os.environ.get("REGNET_WORKBENCH_CACHE") or Path.home() / ".cache" / "regnet-workbench"
    return Path(root)


class DatasetUnavailableError(RuntimeError):
    """A catalog dataset is neither prepared locally nor downloadable."""


@dataclass
class ImageData:
    """Train/val pipelines of (float32 0-255 images, int labels) and what went into them."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    class_names: list[str]
    train_counts: dict[str, int]
    val_counts: dict[str, int]
    image_size: int
    batch_size: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    train_plain: tf.data.Dataset | None = None   # training images, centre-cropped, in order
    make_train: Callable[..., tf.data.Dataset] | None = field(default=None, repr=False)

    augment: object = None  # the loader's augmentation (an `augment.Augment`)
    files: dict | None = field(default=None, repr=False)  # folder data: train paths/labels, loader settings
    multi_label: bool = False  # labels are multi-hot float rows; counts are the images holding each class
    image_counts: tuple[int, int] | None = None  # (train, val) images, when counts are not one per image

    def training(self, seed: int, first_epoch: int = 0, augment=None) -> tf.data.Dataset:
        """Training batches of epochs `first_epoch`, `first_epoch + 1`, ... (endless), from `seed` alone.

        `train` is the pipeline made with the loader's seed, one epoch per
        iteration; iterating it (for example to look at a batch) moves its
        random state on. `finetune` trains on `training(seed, first_epoch)`
        (with `steps_per_epoch`), so a run does not depend on what was iterated
        before, and a resumed run sees the epochs an uninterrupted one would.
        `augment` (a spec, see `workbench.data.augment`) replaces the loader's
        augmentation. Without a loader's pipeline factory this is `train`, repeated.
        """
        if self.make_train is None:
            if augment is not None:
                raise ValueError("This ImageData has no pipeline builder: augment= needs data from "
                                 "wb.load_folder or wb.load_tfds.")
            return self.train.repeat()
        return self.make_train(seed, first_epoch, None if augment is None else augmentation.parse(augment, self.augment))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train(self) -> int:
        return self.image_counts[0] if self.image_counts else sum(self.train_counts.values())

    @property
    def num_val(self) -> int:
        return self.image_counts[1] if self.image_counts else sum(self.val_counts.values())

    @property
    def class_weights(self) -> dict[int, float]:
        """Balanced weights n / (k * n_c) for `model.fit(class_weight=...)`; multi-label: each class's
        positive weight (images without it) / (images with it), for the binary cross-entropy."""
        n, k = self.num_train, self.num_classes
        if self.multi_label:
            return {i: (n - self.train_counts[c]) / max(self.train_counts[c], 1)
                    for i, c in enumerate(self.class_names)}
        return {i: n / (k * max(self.train_counts[c], 1)) for i, c in enumerate(self.class_names)}

    @property
    def imbalance(self) -> float:
        """Largest over smallest training class count."""
        counts = list(self.train_counts.values())
        return max(counts) / max(min(counts), 1)

    def summary(self) -> str:
        """A few lines: classes, counts, imbalance and skipped files."""
        lines = [f"{self.num_classes} classes{' (multi-label)' if self.multi_label else ''}, {self.num_train} "
                 f"train / {self.num_val} val images at {self.image_size}x{self.image_size}"]
        width = max(len(c) for c in self.class_names)
        for c in self.class_names:
            lines.append(f"  {c:<{width}}  train {self.train_counts[c]:>6}  val {self.val_counts[c]:>5}")
        if self.imbalance >= _IMBALANCE_RATIO:
            lo = min(self.class_names, key=self.train_counts.get)
            hi = max(self.class_names, key=self.train_counts.get)
            lines.append(f"Class imbalance: '{hi}' has {self.imbalance:.1f}x the images of '{lo}'; "
                         "consider finetune(..., class_weight=\"balanced\").")
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} unreadable file(s):")
            lines += [f"  {p}: {why}" for p, why in self.skipped[:5]]
            if len(self.skipped) > 5:
                lines.append(f"  ... and {len(self.skipped) - 5} more (see .skipped)")
        return "\n".join(lines)


# ---------------------------------------------------------------- decoding

def decode_raw(contents: tf.Tensor, short_side: int) -> tf.Tensor:
    """Encoded image bytes -> uint8 RGB, the first frame of a GIF.

    JPEGs are decoded at a reduced DCT scale when their shorter side is at
    least twice `short_side`, which makes big photos several times cheaper.
    """
    def jpeg():
        shape = tf.io.extract_jpeg_shape(contents)
        short = tf.minimum(shape[0], shape[1])
        branch = tf.reduce_sum(tf.cast(short // tf.constant([2, 4, 8]) >= short_side, tf.int32))
        return tf.switch_case(branch, [
            lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r) for r in (1, 2, 4, 8)])

    def other():
        return tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)

    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff")
    image = tf.cond(is_jpeg, jpeg, other)
    image.set_shape([None, None, 3])
    return image


def _decode(contents: tf.Tensor, short_side: int) -> tf.Tensor:
    """Encoded image bytes -> uint8 RGB with its shorter side resized to `short_side`."""
    return _resize_short_side(decode_raw(contents, short_side), short_side)


def _resize_short_side(image: tf.Tensor, short_side: int) -> tf.Tensor:
    """An RGB image (0-255) -> uint8 with its shorter side resized to `short_side`."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = short_side / tf.reduce_min(hw)
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), short_side)
    image = tf.cond(scale < 0.5, lambda: tf.image.resize(image, new_hw, antialias=True),
                    lambda: tf.image.resize(image, new_hw))
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    hw = tf.shape(image)[:2]
    top, left = (hw[0] - size) // 2, (hw[1] - size) // 2
    return image[top:top + size, left:left + size]


def decode_side(image_size: int) -> int:
    """The shorter side images are decoded to before the centre crop to `image_size`."""
    return int(round(image_size / _CROP_FRACTION))


def _cache_mode(cache, n: int, short_side: int) -> str:
    if cache != "auto":
        return cache or "none"
    return "memory" if n * short_side * short_side * 4 < _MEMORY_CACHE_BYTES else "disk"


def _disk_cache_file() -> str:
    folder = cache_root() / "tfdata"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"run{os.getpid()}-", dir=folder)
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return os.path.join(tmp, "cache")


@contextlib.contextmanager
def own_seeds_only():
    """Random ops and datasets made inside take their seeds from their own arguments alone.

    TensorFlow derives an op's seed from the global seed too, so the same
    `shuffle(seed=...)` gives another order once anything (an earlier
    `finetune`, `keras.utils.set_random_seed`) has set the global seed; the
    global seed is unset for the block.
    """
    from tensorflow.python.eager import context

    previous = context.global_seed()
    tf.random.set_seed(None)
    try:
        yield
    finally:
        tf.random.set_seed(previous)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per training epoch: the last partial batch is dropped, unless it is the only one."""
    return n // batch_size if n > batch_size else 1


def seeded_epochs(one_epoch, seed: int, first_epoch: int | None, steps: int) -> tf.data.Dataset:
    """Training epochs whose order and randomness depend only on (seed, epoch).

    `one_epoch(epoch_seed)` makes one epoch's batches from an int64 seed
    tensor. With `first_epoch`, the endless sequence of epochs from it (train
    with `steps_per_epoch=steps`): a run resumed at epoch k sees exactly the
    epochs an uninterrupted one would. Without it, one epoch per iteration,
    each iteration another (seeded) epoch, as `ImageData.train`.
    """
    def epoch(e):
        return one_epoch(tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(e, tf.int64))

    with own_seeds_only():
        if first_epoch is None:
            ds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(epoch)
            ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
        else:
            ds = tf.data.Dataset.range(first_epoch, 1 << 62).flat_map(epoch)
        return ds.prefetch(_AUTOTUNE)


def pipelines(train_src, val_src, n_train, image_size, batch_size, seed, augment, cache, num_classes=None):
    """(make_train, val, train_plain) from datasets of (encoded bytes, label).

    `make_train(seed)` builds a shuffled, batched training pipeline over the
    decoded, cached images, augmented as `augment` says (an `augment.Augment`),
    one epoch per iteration; `make_train(seed, first_epoch, augment)` the
    endless sequence of epochs from `first_epoch` on, augmented as the given
    `Augment` (None: the loader's), each epoch a function of (seed, epoch)
    alone, so a resumed run sees the epochs an uninterrupted one would.
    """
    mode = _cache_mode(cache, n_train, decode_side(image_size))
    default = augment

    buffer = max(n_train if mode != "disk" else min(n_train, 2048), 1)
    cached = {}

    def train_decoded(crop):
        if crop not in cached:  # decoded once per form: centre-cropped, or whole for random crops
            cached[crop] = _decoded(train_src, image_size, crop, mode)
        return cached[crop]

    def epochs_of(augment, seed):
        augmentation.check_labels(train_src.element_spec[1], num_classes, augment.ops)
        per_batch = augmentation.batch_augmenter(augment, num_classes, seed)
        source = train_decoded(not augment.crop)  # made here, eagerly: one_epoch is traced by flat_map

        def one_epoch(epoch_seed):
            ds = source.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
            if augment.crop:
                ds = ds.enumerate().map(lambda i, xy: (augmentation.random_resized_crop(
                    xy[0], image_size, tf.stack([epoch_seed, i])), xy[1]), num_parallel_calls=_AUTOTUNE)
            else:
                ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=_AUTOTUNE)
            ds = ds.batch(batch_size, drop_remainder=n_train > batch_size)
            if per_batch is not None:
                ds = ds.enumerate().map(lambda j, xy: per_batch(xy[0], xy[1], epoch_seed * 65_537 + j),
                                        num_parallel_calls=_AUTOTUNE)
            return ds
        return one_epoch

    def make_train(seed, first_epoch=None, augment=None):
        one_epoch = epochs_of(default if augment is None else augment, seed)
        return seeded_epochs(one_epoch, seed, first_epoch, steps_per_epoch(n_train, batch_size))

    def plain(src):
        return plain_batches(src, image_size, batch_size, mode)

    return make_train, plain(val_src), plain(train_src)


def _decoded(src, image_size: int, crop: bool, mode: str = "none") -> tf.data.Dataset:
    """(encoded bytes, label) -> (uint8 image, label): shorter side to `decode_side`, centre-cropped when
    `crop`, cached as `mode` says ("memory", "disk" or "none")."""
    side = decode_side(image_size)
    ds = src.map(lambda b, y: ((_center_crop(_decode(b, side), image_size) if crop else _decode(b, side)), y),
                 num_parallel_calls=_AUTOTUNE)
    if mode == "memory":
        ds = ds.cache()
    elif mode == "disk":
        ds = ds.cache(_disk_cache_file())
    return ds


def fit_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """A decoded RGB image (0-255, any size) -> the float32 centre crop evaluation sees: shorter side
    resized to `decode_side(image_size)`, then cropped to `image_size` square, as `plain_batches` does."""
    return tf.cast(_center_crop(_resize_short_side(image, decode_side(image_size)), image_size), tf.float32)


def plain_batches(src, image_size: int, batch_size: int, mode: str = "none") -> tf.data.Dataset:
    """(encoded bytes, label) -> batches of (float32 centre crops, label), in order: what evaluation sees."""
    ds = _decoded(src, image_size, True, mode).batch(batch_size)
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(_AUTOTUNE)


# ---------------------------------------------------------------- shared by the loaders

def check_loader_args(image_size, batch_size, val_split, seed, max_train_images):
    checks.image_size(image_size)
    checks.integer("seed", seed)
    checks.non_negative_int("max_train_images", max_train_images, " (0 = all)")
    checks.positive_int("batch_size", batch_size)
    checks.fraction("val_split", val_split, " (the share of images held out, e.g. 0.15)", low_open=True)


def error_reason(err: Exception) -> str:
    """The first line of an error, without TensorFlow's "{{function_node ...}}" prefix."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "}}" in text:
        text = text.split("}}", 1)[1].strip()
    return text


def stratified_split(labels: np.ndarray, val_split: float, seed: int):
    """Seeded per-class split of indices: (train_idx, val_idx), at least one of each per class."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_split))
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) > 1 else 0
        val += list(idx[:n_val])
        train += list(idx[n_val:])
    return np.sort(train), np.sort(val)


def subsample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Seeded, class-proportional subset of at most `limit` indices."""
    if not limit or limit >= len(labels):
        return np.arange(len(labels))
    keep, _ = stratified_split(labels, 1 - limit / len(labels), seed + 1)
    return keep[:limit]


def class_counts(labels, class_names) -> dict[str, int]:
    """Images per class; labels are class indices, or class-probability rows (counted by their argmax)."""
    labels = np.asarray(labels)
    labels = labels.argmax(-1) if labels.ndim == 2 else labels
    counts = np.bincount(labels.astype(np.int64), minlength=len(class_names))
    return {c: int(n) for c, n in zip(class_names, counts)}


def class_indices(y) -> np.ndarray:
    """Class indices of labels given as indices or as rows of class probabilities (one-hot, soft)."""
    y = np.asarray(y)
    return (y.argmax(axis=-1) if y.ndim == 2 else y.reshape(-1)).astype("int64")
