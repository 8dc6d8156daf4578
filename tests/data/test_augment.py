"""Augmentation as a parameter: the spec, seeded Keras layers in tf.data, mixup/cutmix labels, bad input."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import slow, tiny_regnet

from workbench.data import augment as augmentation
from workbench.data.pipeline import pipelines, steps_per_epoch
from workbench.train.finetune import finetune
from workbench.data.folders import load_folder
from workbench.data.sample import sample_dataset


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def first_epoch(data, seed, augment=None):
    """The batches of epoch 0 of `data.training(seed)` (an endless sequence of epochs)."""
    return batches(data.training(seed, augment=augment).take(steps_per_epoch(data.num_train, data.batch_size)))


@pytest.fixture(scope="module")
def sample():
    return sample_dataset()


def test_spec_forms():
    assert augmentation.parse("none").ops == ()
    assert augmentation.parse("light").ops == ("flip", "crop")
    assert augmentation.parse("strong").ops == ("flip", "crop", "randaugment")
    assert augmentation.parse(" cutmix, crop ").ops == ("crop", "cutmix")  # run order, whatever the order written
    assert augmentation.parse(False).ops == () and augmentation.parse(True).ops == ("flip", "crop")
    assert augmentation.parse("auto", "crop").ops == ("crop",)
    assert str(augmentation.parse("flip,crop")) == "light" and str(augmentation.parse("crop,mixup")) == "crop,mixup"


@pytest.mark.parametrize("spec", ["flip,zoom", "heavy", "", 3])
def test_unknown_names_list_the_valid_ones(spec, sample):
    with pytest.raises(ValueError, match=r"flip, crop, rotate, color, randaugment, mixup, cutmix"):
        load_folder(sample, image_size=32, augment=spec, verbose=False)


@pytest.mark.parametrize("spec", ["light", "strong", "flip,rotate,color,mixup", "crop,cutmix"])
def test_same_seed_same_batches(spec, sample):
    data = load_folder(sample, image_size=32, batch_size=16, seed=0, max_train_images=32, augment=spec,
                       verbose=False)
    first, again, other = (first_epoch(data, s) for s in (3, 3, 4))
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(first[0][0], other[0][0])
    x, y = first[0]
    assert x.shape == (16, 32, 32, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
    if "mix" in spec:  # one-hot, mixed: rows sum to one, some rows share two classes
        assert y.shape == (16, 3) and np.allclose(y.sum(axis=1), 1) and ((y > 0) & (y < 1)).any()
    else:
        assert y.shape == (16,)


def test_none_is_the_plain_centre_crops_and_flip_is_never_forced(sample):
    data = load_folder(sample, image_size=32, batch_size=64, seed=0, max_train_images=48, augment="none",
                       verbose=False)
    plain = np.concatenate([x for x, _ in batches(data.train_plain)])
    for spec in ("none", "rotate"):  # no flip asked: no image is ever mirrored
        seen = np.concatenate([x for x, _ in first_epoch(data, 0, spec)])
        if spec == "none":
            assert sorted(map(bytes, seen)) == sorted(map(bytes, plain))
        else:
            mirrored = {bytes(np.ascontiguousarray(im[:, ::-1])) for im in plain}
            assert not any(bytes(im) in mirrored for im in seen)


def test_mixing_needs_integer_class_labels():
    images = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8))
    src = tf.data.Dataset.from_tensor_slices((tf.stack([images] * 4), [0.5, 1.5, 0.2, 3.0]))
    make_train, _, _ = pipelines(src, src, 4, 32, 2, 0, augmentation.parse("none"), "memory", num_classes=3)
    assert make_train(0) is not None  # plain augmentation takes any label
    with pytest.raises(ValueError, match=r"mixup mix the labels .* need integer class labels .* float32"):
        make_train(0, augment=augmentation.parse("mixup"))
    with pytest.raises(ValueError, match=r"mixup and cutmix .* no class count"):
        augmentation.check_labels(tf.TensorSpec([], tf.int64), None, ("mixup", "cutmix"))


@slow
def test_finetune_with_mixup_same_seed_same_numbers(sample):
    data = load_folder(sample, image_size=32, batch_size=16, seed=0, max_train_images=32, augment="none",
                       verbose=False)
    runs = [finetune(tiny_regnet(), data, epochs=2, unfreeze="0:all", augment="flip,mixup", verbose=0)
            for _ in range(2)]
    assert runs[0].history == runs[1].history and runs[0].policy["augment"] == "flip,mixup"
    plain = finetune(tiny_regnet(), data, epochs=2, unfreeze="0:all", verbose=0)
    assert plain.history["loss"] != runs[0].history["loss"] and plain.policy["augment"] == "none"
