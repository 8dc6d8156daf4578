"""Training-time augmentation: a spec ("auto", "none", "light", "strong" or "flip,crop,...") and its tf.data ops.

`parse(spec)` turns what the user wrote into an `Augment` (which operations,
and how strong), refusing unknown names with the list of valid ones. The
loaders (`wb.load_folder(augment=...)`, `wb.load_tfds`) apply it inside their
tf.data training pipeline, in two places:

- per image, `crop`: a random-resized crop of the decoded image (area 35-100%,
  aspect 3/4-4/3) instead of the centre crop. Keras has no random-resized-crop
  layer; this is `tf.image.stateless_sample_distorted_bounding_box`.
- per batch, Keras 3 preprocessing layers: `flip` (RandomFlip horizontal),
  `rotate` (RandomRotation, +-10%), `color` (RandomColorJitter), `randaugment`
  (RandAugment, 2 ops), `mixup` (MixUp) and `cutmix` (CutMix) on one-hot labels.

Same seed, same pipeline: Keras' layers draw their randomness from a
`SeedGenerator` variable, whose state would carry over from one pipeline to
the next and, in tf.data's parallel map, depend on thread order. Here each
layer draws from `_BatchSeed`, a stateless generator made from the pipeline
seed and a per-batch random number (`tf.data.Dataset.random(seed)`), so
`ImageData.training(seed)` is a pure function of `seed`.

Which spec "auto" means is decided in `workbench.train.policy` from the transfer
benchmark (`python -m workbench.bench.transfer`).
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

OPERATIONS = ("flip", "crop", "rotate", "color", "randaugment", "mixup", "cutmix")
LEVELS = {"none": (), "light": ("flip", "crop"), "strong": ("flip", "crop", "randaugment")}
MIXING = ("mixup", "cutmix")
AUTO = "none"  # what augment="auto" means, pretrained or not: the transfer benchmark's choice (workbench.train.policy)
CROP_AREA = (0.35, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Augment:
    """The augmentation operations of a training pipeline, in the order they run."""

    ops: tuple[str, ...] = ()

    @property
    def crop(self) -> bool:
        return "crop" in self.ops

    @property
    def mixing(self) -> bool:
        return any(op in MIXING for op in self.ops)

    def __str__(self):
        for name, ops in LEVELS.items():
            if ops == self.ops:
                return name
        return ",".join(self.ops)


def parse(spec, auto: str | None = None) -> Augment:
    """An `Augment` from "none", "light", "strong", "flip,crop,...", True/False (light/none), or an Augment.

    "auto" becomes `auto` (what `workbench.train.policy` chose); without it "auto" is refused.
    """
    if isinstance(spec, Augment):
        return spec
    if spec is True:
        spec = "light"
    elif spec in (False, None):
        spec = "none"
    if not isinstance(spec, str):
        raise ValueError(f"augment must be 'auto', {', '.join(map(repr, LEVELS))} or a comma list of "
                         f"{', '.join(OPERATIONS)}; got {spec!r}.")
    text = spec.strip().lower()
    if text == "auto":
        if auto is None:
            raise ValueError("augment='auto' needs the training policy to resolve it (workbench.train.policy).")
        return parse(auto)
    if text in LEVELS:
        return Augment(LEVELS[text])
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown or not names:
        raise ValueError(f"Unknown augmentation {', '.join(map(repr, unknown)) or repr(spec)}: use 'auto', "
                         f"'none', 'light', 'strong', or a comma list of {', '.join(OPERATIONS)} "
                         f"(e.g. 'flip,crop,mixup').")
    return Augment(tuple(op for op in OPERATIONS if op in names))


# ---------------------------------------------------------------- per image

def random_resized_crop(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """A random crop of CROP_AREA of the image (aspect CROP_ASPECT), resized to size x size, float32."""
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), seed=seed, area_range=CROP_AREA,
        aspect_ratio_range=CROP_ASPECT, max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.image.resize(tf.slice(image, begin, crop), [size, size], antialias=True)
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), [size, size, 3])


# ---------------------------------------------------------------- per batch

class _BatchSeed(keras.random.SeedGenerator):
    """A stateless stand-in for a layer's SeedGenerator: seeds folded from one (2,) tensor, no variable."""

    def __init__(self, seed: tf.Tensor):  # no super().__init__: that would create a state variable
        self._seed, self._count = seed, 0

    def next(self, ordered=True):
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._count)


def _layers(ops) -> list:
    made = {
        "flip": lambda: keras.layers.RandomFlip("horizontal"),
        "rotate": lambda: keras.layers.RandomRotation(0.1, fill_mode="reflect"),
        "color": lambda: keras.layers.RandomColorJitter(value_range=(0, 255), brightness_factor=0.2,
                                                        contrast_factor=0.2, saturation_factor=(0.4, 0.6)),
        "randaugment": lambda: keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5),
        "mixup": lambda: keras.layers.MixUp(alpha=0.2),
        "cutmix": lambda: keras.layers.CutMix(factor=1.0),
    }
    return [(op, made[op]()) for op in ops if op in made]


def check_labels(labels_spec: tf.TensorSpec, num_classes: int | None, ops) -> None:
    """mixup / cutmix mix one-hot labels: refuse labels that are neither class indices nor class-probability rows."""
    mixing = [op for op in ops if op in MIXING]
    if not mixing:
        return
    rows = labels_spec.dtype.is_floating and labels_spec.shape[-1:] == [num_classes]
    ok = (labels_spec.dtype.is_integer and labels_spec.shape.rank in (0, 1)) or rows
    if not ok or not num_classes:
        raise ValueError(f"{' and '.join(mixing)} mix the labels of two images as one-hot class vectors, so "
                         f"they need integer class labels (one per image) or class-probability rows, and the "
                         f"number of classes; got "
                         f"labels of dtype {labels_spec.dtype.name}, shape {labels_spec.shape}"
                         f"{'' if num_classes else ', no class count'}. Use augment without "
                         f"{'/'.join(mixing)} for these labels.")


def batch_augmenter(augment: Augment, num_classes: int | None, seed: int):
    """(images, labels, batch random int64) -> augmented (images, labels): Keras layers after batching.

    With mixup or cutmix the labels come out as rows of class probabilities (float32, num_classes wide):
    integer labels one-hot, probability rows (soft pseudo-labels) as they are.
    """
    layers = _layers(augment.ops)
    seed = tf.cast(seed, tf.int64)

    def apply(images, labels, r):
        if augment.mixing and labels.dtype.is_integer:
            labels = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
        base = tf.stack([r, seed])
        for i, (op, layer) in enumerate(layers):
            layer.generator = _BatchSeed(tf.random.experimental.stateless_fold_in(base, i))
            if op in MIXING:
                out = layer({"images": images, "labels": labels}, training=True)
                images, labels = out["images"], out["labels"]
            else:
                images = layer(images, training=True)
        return tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0), labels

    return apply if layers else None
