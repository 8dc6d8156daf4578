"""Data layer: folder and TFDS loaders, sample dataset, plots."""

import io

import matplotlib.figure
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_classes, write_every_format, write_tfds

from workbench.data.tfds import load_tfds
from workbench.data.pipeline import DatasetUnavailableError
from workbench.data.folders import load_folder
from workbench.report.data_plots import plot_class_distribution, show_batch
from workbench.data.sample import CLASSES, sample_dataset


def first(ds):
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()


def all_labels(ds):
    return np.concatenate([y.numpy() for _, y in ds])


def test_every_format_loads_and_corrupt_files_are_listed(mixed_folder, capsys):
    data = load_folder(mixed_folder, image_size=32, batch_size=4, val_split=0.25, seed=0)
    assert data.class_names == ["cats", "dogs"]
    assert data.num_train + data.num_val == 24  # 12 formats per class; hidden/.txt ignored
    assert sorted(p.split("/")[-1] for p, _ in data.skipped) == ["fake.jpg", "truncated.jpg"]
    reasons = dict((p.split("/")[-1], why) for p, why in data.skipped)
    assert reasons["fake.jpg"] == "not an image (unknown format)"
    assert "truncated" in reasons["truncated.jpg"]
    out = capsys.readouterr().out
    assert "Skipped 2 unreadable file(s)" in out and "fake.jpg" in out
    for _ in range(2):  # two epochs over everything: nothing fails at training time
        for ds in (data.train, data.val):
            for x, y in ds:
                assert x.dtype == tf.float32 and y.dtype == tf.int64
                assert x.shape[1:] == (32, 32, 3)


def test_colour_modes_become_the_same_rgb(tmp_path):
    """Palette, grayscale, CMYK, BMP and GIF versions decode to the same picture as the RGB PNG."""
    root = tmp_path / "d"
    for name in ("a", "b"):
        write_every_format(root / name, 3)
    data = load_folder(root, image_size=32, batch_size=64, val_split=0.5, augment=False, verbose=False)
    x, _ = first(data.train)
    reference = x.mean(axis=(1, 2, 3))
    assert np.all(x.max(axis=(1, 2)) - x.min(axis=(1, 2)) > 5)  # real pictures, not blank
    assert np.ptp(reference) < 60


def test_batches_shape_dtype_range(tmp_path):
    root = write_classes(tmp_path / "d", {"a": 12, "b": 12, "c": 12})
    data = load_folder(root, image_size=48, batch_size=8, val_split=0.25, seed=1, verbose=False)
    x, y = first(data.train)
    assert x.shape == (8, 48, 48, 3) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 255 and x.max() > 1
    assert set(y) <= {0, 1, 2}
    xv, _ = first(data.val)
    assert xv.shape[1:] == (48, 48, 3) and xv.dtype == np.float32
    assert data.num_train == 27 and data.num_val == 9
    plain = [np.concatenate(a) for a in zip(*[(x, y) for x, y in data.train_plain.as_numpy_iterator()])]
    again = [np.concatenate(a) for a in zip(*[(x, y) for x, y in data.train_plain.as_numpy_iterator()])]
    assert plain[0].shape == (27, 48, 48, 3) and sorted(np.bincount(plain[1])) == [9, 9, 9]
    np.testing.assert_array_equal(plain[0], again[0])   # un-augmented, same order every pass


def test_split_is_seeded_and_stratified(tmp_path):
    root = write_classes(tmp_path / "d", {"a": 20, "b": 10, "c": 30})
    d0 = load_folder(root, image_size=32, batch_size=64, val_split=0.2, seed=0, verbose=False)
    d0b = load_folder(root, image_size=32, batch_size=64, val_split=0.2, seed=0, verbose=False)
    d1 = load_folder(root, image_size=32, batch_size=64, val_split=0.2, seed=1, verbose=False)
    assert d0.val_counts == {"a": 4, "b": 2, "c": 6}
    assert d0.train_counts == {"a": 16, "b": 8, "c": 24}
    np.testing.assert_array_equal(first(d0.val)[0], first(d0b.val)[0])
    np.testing.assert_array_equal(first(d0.train)[0], first(d0b.train)[0])  # augmentation is seeded
    assert not np.array_equal(first(d0.val)[0], first(d1.val)[0])
    e1, e2 = [first(d0.train)[1] for _ in range(2)]
    assert not np.array_equal(e1, e2)  # reshuffled every epoch


def test_train_val_folders(tmp_path):
    write_classes(tmp_path / "d" / "train", {"x": 6, "y": 5})
    write_classes(tmp_path / "d" / "val", {"x": 2, "y": 3})
    data = load_folder(tmp_path / "d", image_size=32, batch_size=4, verbose=False)
    assert data.class_names == ["x", "y"]
    assert data.train_counts == {"x": 6, "y": 5} and data.val_counts == {"x": 2, "y": 3}
    assert sorted(all_labels(data.val)) == [0, 0, 1, 1, 1]


def test_imbalance_class_weights_and_max_train_images(tmp_path, capsys):
    root = write_classes(tmp_path / "d", {"big": 40, "small": 8})
    data = load_folder(root, image_size=32, batch_size=4, val_split=0.25, seed=0)
    assert "Class imbalance" in capsys.readouterr().out
    w = data.class_weights
    assert w[1] > w[0] and w[0] * 30 == pytest.approx(w[1] * 6)
    limited = load_folder(root, image_size=32, batch_size=4, val_split=0.25, max_train_images=12,
                          verbose=False)
    assert limited.num_train == 12 and limited.val_counts == data.val_counts
    assert limited.train_counts["small"] >= 1
    assert len(all_labels(limited.train)) == 12


def test_bad_input_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_folder(tmp_path / "empty")
    write_classes(tmp_path / "one", {"only": 3})
    with pytest.raises(ValueError, match="only the class 'only'"):
        load_folder(tmp_path / "one")
    root = write_classes(tmp_path / "bad", {"good": 3})
    (root / "broken").mkdir()
    (root / "broken" / "x.jpg").write_text("nope")
    with pytest.raises(ValueError, match=r"\['broken'\].*no readable images"):
        load_folder(root, verbose=False)
    with pytest.raises(ValueError, match="image_size=16"):
        load_folder(root, image_size=16)
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="val_split"):
            load_folder(root, val_split=bad)


# ------------------------------------------------------------------ TFDS

def test_tfds_seeded_split_of_train(tmp_path):
    write_tfds(tmp_path, "wb_tiny", {"train": 30})
    data = load_tfds("wb_tiny", image_size=32, batch_size=8, val_split=0.2, seed=0, data_dir=tmp_path,
                     verbose=False)
    assert data.class_names == ["red", "green", "blue"]
    assert data.train_counts == {"red": 8, "green": 8, "blue": 8}
    assert data.val_counts == {"red": 2, "green": 2, "blue": 2}
    x, y = first(data.train)
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32 and x.max() <= 255
    assert sorted(all_labels(data.val)) == [0, 0, 1, 1, 2, 2]


def test_tfds_own_validation_split(tmp_path):
    write_tfds(tmp_path, "wb_tiny_val", {"train": 12, "validation": 6})
    data = load_tfds("wb_tiny_val", image_size=32, batch_size=4, data_dir=tmp_path, verbose=False)
    assert data.num_train == 12 and data.num_val == 6
    assert len(all_labels(data.val)) == 6


def test_tfds_offline_error_names_dataset_and_data_dir(tmp_path):
    with pytest.raises(DatasetUnavailableError) as err:
        load_tfds("tf_flowers", data_dir=tmp_path / "tfds", verbose=False)
    text = str(err.value)
    assert "tf_flowers" in text and str(tmp_path / "tfds") in text
    assert "data_dir" in text and "load_folder" in text


def test_tfds_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        load_tfds("no_such_dataset_xyz", data_dir=tmp_path, verbose=False)


@pytest.mark.parametrize("augment", ["none", "light"])
def test_training_epochs_depend_on_seed_and_epoch_only(tmp_path, augment):
    """A run resumed at epoch k trains on the batches an uninterrupted run sees at epoch k."""
    write_classes(tmp_path, {"a": 10, "b": 10})
    data = load_folder(tmp_path, image_size=32, batch_size=8, val_split=0.2, seed=0, augment=augment,
                       verbose=False)
    steps = 2  # 16 training images, batches of 8

    def epochs(seed, first_epoch, n):
        return [x.numpy() for x, _ in data.training(seed, first_epoch).take(n * steps)]

    from_start, resumed = epochs(0, 0, 3), epochs(0, 2, 1)
    for a, b in zip(from_start[2 * steps:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(from_start[0], from_start[steps])  # each epoch its own order
    assert not np.array_equal(epochs(1, 2, 1)[0], resumed[0])     # another seed, other batches


# ------------------------------------------------------------------ sample + plots

def test_sample_dataset_is_real_offline_and_idempotent(tmp_path):
    root = sample_dataset(tmp_path / "sample")
    assert sample_dataset(tmp_path / "sample") == root
    assert sorted(p.name for p in (root / "train").iterdir()) == list(CLASSES)
    data = load_folder(root, image_size=64, batch_size=16, verbose=False)
    assert data.num_classes == 3 and data.num_train == 240 and data.num_val == 60
    assert not data.skipped


def test_plots_return_figures(tmp_path):
    root = write_classes(tmp_path / "d", {"a": 6, "b": 6})
    data = load_folder(root, image_size=32, batch_size=4, verbose=False)
    fig = show_batch(data, n=6, path=tmp_path / "batch.png")
    assert isinstance(fig, matplotlib.figure.Figure) and (tmp_path / "batch.png").stat().st_size > 0
    assert [ax.get_title() for ax in fig.axes if ax.get_title()][:1][0] in ("a", "b")
    fig = plot_class_distribution(data, path=tmp_path / "dist.png")
    assert isinstance(fig, matplotlib.figure.Figure) and (tmp_path / "dist.png").stat().st_size > 0
    buf = io.BytesIO()
    fig.savefig(buf)
