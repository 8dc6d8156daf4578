"""`load_tfds`: a TensorFlow Datasets image-classification dataset by name, downloaded once."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from workbench.data import augment as augmentation
from workbench.data.pipeline import (DatasetUnavailableError, ImageData, check_loader_args, class_counts, error_reason,
                            pipelines, stratified_split, subsample)
from workbench.utils.network import looks_offline


def _unavailable(name, data_dir, cause) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"TFDS dataset '{name}' is not prepared in data_dir '{data_dir}' and could not be downloaded "
        f"({cause}). To proceed: on a machine with network run "
        f"`tfds.builder('{name}', data_dir=DIR).download_and_prepare()` and copy DIR here, then pass "
        f"data_dir=DIR; or use wb.load_folder() on a folder of images (wb.sample_dataset() works offline).")


def _select(ds: tf.data.Dataset, mask: np.ndarray) -> tf.data.Dataset:
    """The elements of `ds` where the boolean `mask` is true."""
    def keep(i, _):
        return tf.gather(mask, i)

    def drop_index(_, element):
        return element

    return ds.enumerate().filter(keep).map(drop_index)


def load_tfds(name: str, image_size: int = 224, batch_size: int = 32, val_split: float = 0.15,
              seed: int = 0, data_dir=None, max_train_images: int = 0, augment="auto",
              cache="auto", download: bool = True, verbose: bool = True) -> ImageData:
    """Load a TFDS image-classification dataset by name.

    Uses the dataset's own `validation` split when it has one, else a seeded,
    stratified split of `train`. Downloads and prepares it when needed.
    """
    import tensorflow_datasets as tfds

    check_loader_args(image_size, batch_size, val_split, seed, max_train_images)
    augmentation.parse(augment, "none")  # an unknown name fails here, before any download
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError and friends
        raise ValueError(f"No TFDS dataset named '{name}' (data_dir={data_dir}): {error_reason(err)}") from err
    where = builder.data_dir
    if not builder.is_prepared():
        if not download or looks_offline():
            raise _unavailable(name, where, "download disabled" if not download else "no network")
        try:
            builder.download_and_prepare()
        except Exception as err:  # noqa: BLE001 - network, checksum, manual-download errors
            raise _unavailable(name, where, error_reason(err)) from err
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    class_names = list(builder.info.features[label_key].names)

    def read(split):
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False,
                       decoders={image_key: tfds.decode.SkipDecoding()})
        return ds.map(lambda ex: (ex[image_key], ex[label_key]))

    def labels_of(ds):
        return np.concatenate([y for _, y in ds.map(lambda x, y: (0, y)).batch(8192).as_numpy_iterator()]
                              or [np.zeros(0, np.int64)])

    train_src = read("train")
    labels = labels_of(train_src)
    if "validation" in builder.info.splits:
        val_src = read("validation")
        val_labels = labels_of(val_src)
        train_idx = np.arange(len(labels))
    else:
        train_idx, val_idx = stratified_split(labels, val_split, seed)
        val_mask = np.zeros(len(labels), bool)
        val_mask[val_idx] = True
        val_src = _select(train_src, val_mask)
        val_labels = labels[val_idx]
    keep = np.sort(train_idx[subsample(labels[train_idx], max_train_images, seed)])
    keep_mask = np.zeros(len(labels), bool)
    keep_mask[keep] = True
    train_src = _select(train_src, keep_mask)

    augment = augmentation.parse(augment, augmentation.AUTO)
    make_train, val, plain = pipelines(train_src, val_src, len(keep), image_size, batch_size, seed,
                                       augment, cache, len(class_names))
    data = ImageData(make_train(seed), val, class_names, class_counts(labels[keep], class_names),
                     class_counts(val_labels, class_names), image_size, batch_size, [], plain, make_train, augment)
    if verbose:
        print(data.summary())
    return data
