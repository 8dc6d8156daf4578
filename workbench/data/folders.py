"""`load_folder`: one sub-folder of images per class (or train/ and val/ inside), every file checked first."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from workbench.data import augment as augmentation
from workbench.data.pipeline import (ImageData, cache_root, check_loader_args, class_counts, decode_raw, decode_side,
                            error_reason, pipelines, plain_batches, stratified_split, subsample)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Formats tf.io.decode_image reads exactly like PIL; anything else is converted.
_TF_NATIVE = {"JPEG", "PNG", "GIF", "WEBP"}


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and _visible(p.name)}


def _image_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        files += [Path(dirpath, f) for f in sorted(filenames)
                  if _visible(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
    return files


_check_fns: dict[int, tf.types.experimental.PolymorphicFunction] = {}


def _check_decode(path: str, short_side: int) -> None:
    """Decode `path` with the pipeline's own decoder; raises on failure."""
    if short_side not in _check_fns:
        _check_fns[short_side] = tf.function(lambda p: tf.shape(decode_raw(tf.io.read_file(p), short_side)),
                                             input_signature=[tf.TensorSpec([], tf.string)])
    _check_fns[short_side](tf.constant(path))


def _convert(path: Path) -> Path:
    """Re-encode an image TF cannot read exactly (BMP, 1-bit, ...) as an RGB PNG in the cache."""
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    out = cache_root() / "converted" / f"{key}.png"
    if not out.exists():
        with Image.open(path) as im:
            im.seek(0)
            rgb = im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA", "LA") else im.convert("RGB")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        rgb.save(tmp, format="PNG")
        os.replace(tmp, out)
    return out


def _validate(path: Path, short_side: int) -> tuple[Path | None, str]:
    """(readable file to feed the pipeline, "") or (None, reason it is unusable)."""
    try:
        with Image.open(path) as im:
            fmt = im.format
    except UnidentifiedImageError:
        return None, "not an image (unknown format)"
    except Exception as err:  # noqa: BLE001 - any failure means "not an image"
        return None, f"not a readable image ({error_reason(err)})"
    try:
        if fmt in _TF_NATIVE:
            try:
                _check_decode(str(path), short_side)
                return path, ""
            except tf.errors.OpError:
                try:  # PIL may still read it (then it is converted); else report PIL's reason
                    with Image.open(path) as im:
                        im.load()
                except Exception as err:  # noqa: BLE001
                    return None, error_reason(err)
        converted = _convert(path)
        _check_decode(str(converted), short_side)
        return converted, ""
    except Exception as err:  # noqa: BLE001
        return None, error_reason(err)


def validate_all(files: list[Path], short_side: int) -> list[tuple[Path | None, str]]:
    """`_validate` of every file, on a few threads (decoding releases the GIL)."""
    workers = min(8, (os.cpu_count() or 2) * 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda path: _validate(path, short_side), files))


def _scan_split(folder: Path, class_names: list[str], short_side: int):
    """Validated (paths, labels) of every class under `folder`, and the skipped files."""
    jobs = [(path, label) for label, c in enumerate(class_names)
            if (folder / c).is_dir() for path in _image_files(folder / c)]
    results = validate_all([path for path, _ in jobs], short_side)
    paths, labels, skipped = [], [], []
    for (path, label), (usable, why) in zip(jobs, results):
        if usable is None:
            skipped.append((str(path), why))
        else:
            paths.append(str(usable))
            labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64), skipped


def load_folder(folder, image_size: int = 224, batch_size: int = 32, val_split: float = 0.15,
                seed: int = 0, max_train_images: int = 0, augment="auto",
                cache="auto", verbose: bool = True) -> ImageData:
    """Load a folder with one sub-folder of images per class (or train/ and val/ inside).

    Every image is decoded once up front with the pipeline's own decoder, so
    unreadable files are listed in `.skipped` instead of failing mid-epoch.
    `cache` is "auto" (memory when small, else a temporary file), "memory",
    "disk" or None.
    """
    check_loader_args(image_size, batch_size, val_split, seed, max_train_images)
    augmentation.parse(augment, "none")  # an unknown name fails here, before the folder is scanned
    root = Path(folder).expanduser()
    expected = ("Expected one sub-folder of images per class (photos/cats/*.jpg, photos/dogs/*.jpg), "
                "or train/ and val/ folders that each hold one sub-folder per class.")
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder '{root}' does not exist. {expected}")
    dirs = _class_dirs(root)
    split_layout = "train" in dirs and set(dirs) <= {"train", "val", "validation", "test"}
    train_root = dirs["train"] if split_layout else root
    val_root = dirs.get("val", dirs.get("validation")) if split_layout else None
    class_names = list(_class_dirs(train_root))
    if len(class_names) < 2:
        found = f"only the class '{class_names[0]}'" if class_names else "no class sub-folders"
        raise ValueError(f"Found {found} in '{train_root}': at least 2 classes are needed. {expected}")
    if val_root is not None:
        extra = sorted(set(_class_dirs(val_root)) - set(class_names))
        if extra:
            raise ValueError(f"'{val_root}' has classes {extra} that are not in '{train_root}' "
                             f"({class_names}). The val/ classes must match the train/ classes.")

    paths, labels, skipped = _scan_split(train_root, class_names, decode_side(image_size))
    empty = [c for c, n in class_counts(labels, class_names).items() if n == 0]
    if empty:
        raise ValueError(f"Class folder(s) {empty} in '{train_root}' have no readable images "
                         f"(extensions {', '.join(IMAGE_EXTENSIONS)}; {len(skipped)} file(s) skipped as "
                         "unreadable). Add images or remove the folder(s).")
    val = None
    if val_root is not None:
        val_paths, val_labels, val_skipped = _scan_split(val_root, class_names, decode_side(image_size))
        skipped += val_skipped
        if not len(val_paths):
            raise ValueError(f"'{val_root}' has no readable images in class sub-folders {class_names}.")
        val = (val_paths, val_labels)
    return assemble(paths, labels, val, class_names, skipped, image_size=image_size, batch_size=batch_size,
                    val_split=val_split, seed=seed, max_train_images=max_train_images, augment=augment,
                    cache=cache, verbose=verbose)


def _strata(labels: np.ndarray) -> np.ndarray:
    """What a split keeps in proportion: the class, or (multi-hot rows) the rarest class each image holds."""
    if labels.ndim == 1:
        return labels
    rarity = np.where(labels > 0, labels.sum(0, keepdims=True), np.inf)
    return np.where(np.isfinite(rarity.min(1)), rarity.argmin(1), labels.shape[1])


def _counts(labels: np.ndarray, class_names) -> dict[str, int]:
    if labels.ndim == 1:
        return class_counts(labels, class_names)
    return {c: int(n) for c, n in zip(class_names, (labels > 0).sum(0))}


def assemble(paths, labels, val, class_names, skipped, *, image_size, batch_size, val_split, seed,
             max_train_images, augment, cache, verbose) -> ImageData:
    """The `ImageData` of checked files: `labels` class indices or multi-hot rows (multi-label); `val`
    (paths, labels), or None for a seeded split stratified by class; then subsampled, shuffled, cached."""
    labels = np.asarray(labels)
    if val is None:
        train_idx, val_idx = stratified_split(_strata(labels), val_split, seed)
        val = ([paths[i] for i in val_idx], labels[val_idx])
        paths, labels = [paths[i] for i in train_idx], labels[train_idx]
    val_paths, val_labels = val
    keep = subsample(_strata(labels), max_train_images, seed)
    keep = np.random.default_rng(seed).permutation(keep)  # mix classes in cache order
    paths, labels = [paths[i] for i in keep], labels[keep]
    multi = labels.ndim == 2
    augment = augmentation.parse(augment, augmentation.AUTO)
    make_train, val, plain = pipelines(encoded(paths, labels), encoded(val_paths, val_labels), len(paths),
                                       image_size, batch_size, seed, augment, cache, len(class_names))
    data = ImageData(make_train(seed), val, class_names, _counts(labels, class_names),
                     _counts(np.asarray(val_labels), class_names), image_size, batch_size, skipped, plain,
                     make_train, augment, files={"paths": paths, "labels": labels, "seed": seed, "cache": cache},
                     multi_label=multi, image_counts=(len(paths), len(val_paths)) if multi else None)
    if verbose:
        print(data.summary())
    return data


def encoded(paths, labels) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((paths, labels)).map(lambda f, t: (tf.io.read_file(f), t))


def scan_unlabeled(folder, image_size: int) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(files, what to feed the pipeline for each, skipped (file, reason)): the readable images anywhere
    under `folder`, checked as `load_folder` does (a format TF cannot read exactly is fed converted).

    Raises when the folder is missing or holds no image files at all; files
    that are all unreadable are returned as skipped (the caller decides).
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Unlabelled-image folder '{root}' does not exist: point it at a folder of "
                                "images (no class sub-folders needed).")
    files = image_files(root)
    if not files:
        raise ValueError(f"Unlabelled-image folder '{root}' has no image files (extensions "
                         f"{', '.join(IMAGE_EXTENSIONS)}): add the images to pseudo-label, or leave it out.")
    return check_images(files, image_size)


def image_files(folder) -> list[Path]:
    """The image files anywhere under `folder` (by extension; hidden files and folders left out), sorted."""
    return _image_files(Path(folder).expanduser())


def check_images(files, image_size: int) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(readable files, what to feed the pipeline for each, skipped (file, reason)) of `files`, each
    decoded once with the pipeline's own decoder as `load_folder` does (a format TF cannot read exactly
    is fed converted)."""
    files = [Path(f) for f in files]
    results = validate_all(files, decode_side(image_size))
    readable = [(str(f), str(path)) for f, (path, _) in zip(files, results) if path is not None]
    skipped = [(str(f), why) for f, (path, why) in zip(files, results) if path is None]
    return [f for f, _ in readable], [p for _, p in readable], skipped


def unlabeled_batches(paths: list[str], image_size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of (centre crops, file index) of `paths`, in order, decoded as the validation images are."""
    return plain_batches(encoded(paths, np.arange(len(paths))), image_size, batch_size)


def with_extra_images(data: ImageData, paths: list[str], label_rows: np.ndarray, augment=None) -> ImageData:
    """`data` (from `load_folder`) whose training set also holds `paths` with class-probability rows
    `label_rows` (soft or one-hot); the labelled images become one-hot rows. Same validation set."""
    if data.files is None:
        raise ValueError("Adding images to a training set needs data from wb.load_folder (its files are known).")
    files, k = data.files, data.num_classes
    own = np.asarray(files["labels"])
    own = own.astype(np.float32) if own.ndim == 2 else np.eye(k, dtype=np.float32)[own]
    rows = np.concatenate([own, np.asarray(label_rows, np.float32).reshape(-1, k)])
    all_paths = list(files["paths"]) + list(paths)
    order = np.random.default_rng(files["seed"]).permutation(len(all_paths))  # mix them in cache order
    all_paths, rows = [all_paths[i] for i in order], rows[order]
    augment = augmentation.parse(augment, augmentation.AUTO) if augment is not None else data.augment
    no_val = encoded(tf.constant([], tf.string), np.zeros((0, k), np.float32))
    make_train, _, plain = pipelines(encoded(all_paths, rows), no_val, len(all_paths), data.image_size,
                                     data.batch_size, files["seed"], augment, files["cache"], k)
    return ImageData(make_train(files["seed"]), data.val, data.class_names, class_counts(rows, data.class_names),
                     data.val_counts, data.image_size, data.batch_size, data.skipped, plain, make_train, augment,
                     files={**files, "paths": all_paths, "labels": rows})
