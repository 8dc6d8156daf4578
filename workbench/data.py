"""Input pipelines: image folders and TFDS catalog datasets as tf.data."""

from __future__ import annotations

import atexit
import concurrent.futures
import hashlib
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Formats tf.io.decode_image reads exactly like PIL; anything else is converted.
_TF_NATIVE = {"JPEG", "PNG", "GIF", "WEBP"}
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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train(self) -> int:
        return sum(self.train_counts.values())

    @property
    def num_val(self) -> int:
        return sum(self.val_counts.values())

    @property
    def class_weights(self) -> dict[int, float]:
        """Balanced weights n / (k * n_c) for `model.fit(class_weight=...)`."""
        n, k = self.num_train, self.num_classes
        return {i: n / (k * max(self.train_counts[c], 1)) for i, c in enumerate(self.class_names)}

    @property
    def imbalance(self) -> float:
        """Largest over smallest training class count."""
        counts = list(self.train_counts.values())
        return max(counts) / max(min(counts), 1)

    def summary(self) -> str:
        """A few lines: classes, counts, imbalance and skipped files."""
        lines = [f"{self.num_classes} classes, {self.num_train} train / {self.num_val} val images "
                 f"at {self.image_size}x{self.image_size}"]
        width = max(len(c) for c in self.class_names)
        for c in self.class_names:
            lines.append(f"  {c:<{width}}  train {self.train_counts[c]:>6}  val {self.val_counts[c]:>5}")
        if self.imbalance >= _IMBALANCE_RATIO:
            lo = min(self.class_names, key=self.train_counts.get)
            hi = max(self.class_names, key=self.train_counts.get)
            lines.append(f"Class imbalance: '{hi}' has {self.imbalance:.1f}x the images of '{lo}'; "
                         "consider model.fit(..., class_weight=data.class_weights).")
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} unreadable file(s):")
            lines += [f"  {p}: {why}" for p, why in self.skipped[:5]]
            if len(self.skipped) > 5:
                lines.append(f"  ... and {len(self.skipped) - 5} more (see .skipped)")
        return "\n".join(lines)


# ---------------------------------------------------------------- decoding

def _decode_raw(contents: tf.Tensor, short_side: int) -> tf.Tensor:
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
    image = _decode_raw(contents, short_side)
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


def _augment(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """Random-resized crop (25-100% of the area, aspect 3/4-4/3) and horizontal flip."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), seed=seeds[0], area_range=(0.25, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.image.resize(tf.slice(image, begin, crop), [size, size], antialias=True)
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    return tf.clip_by_value(image, 0.0, 255.0)


def _short_side(image_size: int) -> int:
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


def _pipelines(train_src, val_src, n_train, image_size, batch_size, seed, augment, cache):
    """Build train and val datasets from datasets of (encoded bytes, label)."""
    short = _short_side(image_size)

    def decoded(src, crop):
        ds = src.map(lambda b, y: ((_center_crop(_decode(b, short), image_size) if crop
                                    else _decode(b, short)), y), num_parallel_calls=_AUTOTUNE)
        mode = _cache_mode(cache, n_train, short)
        if mode == "memory":
            ds = ds.cache()
        elif mode == "disk":
            ds = ds.cache(_disk_cache_file())
        return ds

    train = decoded(train_src, crop=not augment)
    buffer = n_train if _cache_mode(cache, n_train, short) != "disk" else min(n_train, 2048)
    train = train.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True)
    if augment:
        train = tf.data.Dataset.zip(train, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True))
        train = train.map(lambda xy, r: (_augment(xy[0], image_size, tf.stack([r, tf.cast(seed, tf.int64)])),
                                         xy[1]), num_parallel_calls=_AUTOTUNE)
    else:
        train = train.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=_AUTOTUNE)
    train = train.batch(batch_size, drop_remainder=n_train > batch_size).prefetch(_AUTOTUNE)
    def plain(src):
        ds = decoded(src, crop=True).batch(batch_size)
        return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(_AUTOTUNE)

    return train, plain(val_src), plain(train_src)


# ---------------------------------------------------------------- folders

def _check_args(image_size, batch_size, val_split):
    if int(image_size) < 32:
        raise ValueError(f"image_size={image_size} is too small: expected an integer >= 32 (e.g. 224).")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size}: expected a positive integer.")
    if not 0 < float(val_split) < 1:
        raise ValueError(f"val_split={val_split}: expected a fraction strictly between 0 and 1 (e.g. 0.15).")


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
        _check_fns[short_side] = tf.function(lambda p: tf.shape(_decode_raw(tf.io.read_file(p), short_side)),
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


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "}}" in text:  # strip TF's "{{function_node ...}}" prefix
        text = text.split("}}", 1)[1].strip()
    return text


def _validate(path: Path, short_side: int) -> tuple[Path | None, str]:
    """(readable file to feed the pipeline, "") or (None, reason it is unusable)."""
    try:
        with Image.open(path) as im:
            fmt = im.format
    except UnidentifiedImageError:
        return None, "not an image (unknown format)"
    except Exception as err:  # noqa: BLE001 - any failure means "not an image"
        return None, f"not a readable image ({_reason(err)})"
    try:
        if fmt in _TF_NATIVE:
            try:
                _check_decode(str(path), short_side)
                return path, ""
            except tf.errors.OpError as tf_err:
                try:  # PIL may still read it (then it is converted); else report PIL's reason
                    with Image.open(path) as im:
                        im.load()
                except Exception as err:  # noqa: BLE001
                    return None, _reason(err)
                del tf_err
        converted = _convert(path)
        _check_decode(str(converted), short_side)
        return converted, ""
    except Exception as err:  # noqa: BLE001
        return None, _reason(err)


def _scan_split(folder: Path, class_names: list[str], short_side: int):
    """Validated (paths, labels) of every class under `folder`, and the skipped files."""
    jobs = [(path, label) for label, c in enumerate(class_names)
            if (folder / c).is_dir() for path in _image_files(folder / c)]
    workers = min(8, (os.cpu_count() or 2) * 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda job: _validate(job[0], short_side), jobs))
    paths, labels, skipped = [], [], []
    for (path, label), (usable, why) in zip(jobs, results):
        if usable is None:
            skipped.append((str(path), why))
        else:
            paths.append(str(usable))
            labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64), skipped


def _stratified_split(labels: np.ndarray, val_split: float, seed: int):
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


def _subsample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Seeded, class-proportional subset of at most `limit` indices."""
    if not limit or limit >= len(labels):
        return np.arange(len(labels))
    keep, _ = _stratified_split(labels, 1 - limit / len(labels), seed + 1)
    return keep[:limit]


def _counts(labels, class_names) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    return {c: int(n) for c, n in zip(class_names, counts)}


def load_folder(folder, image_size: int = 224, batch_size: int = 32, val_split: float = 0.15,
                seed: int = 0, max_train_images: int = 0, augment: bool = True,
                cache="auto", verbose: bool = True) -> ImageData:
    """Load a folder with one sub-folder of images per class (or train/ and val/ inside).

    Every image is decoded once up front with the pipeline's own decoder, so
    unreadable files are listed in `.skipped` instead of failing mid-epoch.
    `cache` is "auto" (memory when small, else a temporary file), "memory",
    "disk" or None.
    """
    _check_args(image_size, batch_size, val_split)
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

    paths, labels, skipped = _scan_split(train_root, class_names, _short_side(image_size))
    empty = [c for c, n in _counts(labels, class_names).items() if n == 0]
    if empty:
        raise ValueError(f"Class folder(s) {empty} in '{train_root}' have no readable images "
                         f"(extensions {', '.join(IMAGE_EXTENSIONS)}; {len(skipped)} file(s) skipped as "
                         "unreadable). Add images or remove the folder(s).")
    if val_root is not None:
        val_paths, val_labels, val_skipped = _scan_split(val_root, class_names, _short_side(image_size))
        skipped += val_skipped
        if not len(val_paths):
            raise ValueError(f"'{val_root}' has no readable images in class sub-folders {class_names}.")
    else:
        train_idx, val_idx = _stratified_split(labels, val_split, seed)
        val_paths, val_labels = [paths[i] for i in val_idx], labels[val_idx]
        paths, labels = [paths[i] for i in train_idx], labels[train_idx]
    keep = _subsample(labels, max_train_images, seed)
    keep = np.random.default_rng(seed).permutation(keep)  # mix classes in cache order
    paths, labels = [paths[i] for i in keep], labels[keep]

    def source(p, y):
        return tf.data.Dataset.from_tensor_slices((p, y)).map(lambda f, t: (tf.io.read_file(f), t))

    train, val, plain = _pipelines(source(paths, labels), source(val_paths, val_labels), len(paths),
                                   image_size, batch_size, seed, augment, cache)
    data = ImageData(train, val, class_names, _counts(labels, class_names),
                     _counts(val_labels, class_names), image_size, batch_size, skipped, plain)
    if verbose:
        print(data.summary())
    return data


# ---------------------------------------------------------------- TFDS

def _looks_offline(hosts=("download.tensorflow.org", "storage.googleapis.com"), timeout=5.0) -> bool:
    """True when none of the usual TFDS download hosts resolves (fails fast instead of retrying)."""
    def resolves(host):
        try:
            socket.getaddrinfo(host, 443)
            return True
        except OSError:
            return False
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        futures = [pool.submit(resolves, h) for h in hosts]
        try:
            return not any(f.result(timeout=timeout) for f in futures)
        except concurrent.futures.TimeoutError:
            return True


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
              seed: int = 0, data_dir=None, max_train_images: int = 0, augment: bool = True,
              cache="auto", download: bool = True, verbose: bool = True) -> ImageData:
    """Load a TFDS image-classification dataset by name.

    Uses the dataset's own `validation` split when it has one, else a seeded,
    stratified split of `train`. Downloads and prepares it when needed.
    """
    import tensorflow_datasets as tfds

    _check_args(image_size, batch_size, val_split)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError and friends
        raise ValueError(f"No TFDS dataset named '{name}' (data_dir={data_dir}): {_reason(err)}") from err
    where = builder.data_dir
    if not builder.is_prepared():
        if not download or _looks_offline():
            raise _unavailable(name, where, "download disabled" if not download else "no network")
        try:
            builder.download_and_prepare()
        except Exception as err:  # noqa: BLE001 - network, checksum, manual-download errors
            raise _unavailable(name, where, _reason(err)) from err
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
        train_idx, val_idx = _stratified_split(labels, val_split, seed)
        val_mask = np.zeros(len(labels), bool)
        val_mask[val_idx] = True
        val_src = _select(train_src, val_mask)
        val_labels = labels[val_idx]
    keep = np.sort(train_idx[_subsample(labels[train_idx], max_train_images, seed)])
    keep_mask = np.zeros(len(labels), bool)
    keep_mask[keep] = True
    train_src = _select(train_src, keep_mask)

    train, val, plain = _pipelines(train_src, val_src, len(keep), image_size, batch_size, seed,
                                   augment, cache)
    data = ImageData(train, val, class_names, _counts(labels[keep], class_names),
                     _counts(val_labels, class_names), image_size, batch_size, [], plain)
    if verbose:
        print(data.summary())
    return data
