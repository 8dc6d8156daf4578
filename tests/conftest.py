"""Shared test fixtures: the tiny RegNet, image folders written with PIL, TFDS-format datasets, a loopback Hub."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hub_mirror import HubMirror
from PIL import Image

import workbench as wb

# The tiny model of the tests: a real RegNetY (4 stages, 8 blocks, grouped convs, SE), ~0.1 M parameters.
TINY = wb.RegNetConfig(w0=16, wa=16.0, wm=2.0, depth=8, group_width=8, se_ratio=0.25, name="tiny_regnety")


slow = pytest.mark.slow  # the slow tier: python -m pytest -m slow


def sweep(cases, fast: int = 1) -> list:
    """Cases of a parametrized sweep: the first `fast` run in the default tier, the rest in the slow tier."""
    return [case if i < fast else pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=slow)
            for i, case in enumerate(cases)]


needs_timm = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None or importlib.util.find_spec("torch") is None,
    reason="timm/torch not installed (pip install -r requirements-reference.txt)")

# Logits of ours and of timm on the same weights, in float32: TF and PyTorch round ~100 layers
# differently, measured up to 2.3e-4 (RegNetX-400MF) on image-dependent logits of order 1
# (`torch_reference.perturb`). In float64 they agree to ~1e-13 (`float64_outputs`): what is left in
# float32 is rounding, not the model.
FLOAT32_ATOL = 5e-4


def float64_outputs(variant, weights, images):
    """(feature maps before pooling, logits) of our model in float64, on float32 weights from a file."""
    import keras

    keras.config.set_dtype_policy("float64")
    try:
        model = wb.regnet(variant, weights=weights, classifier_activation=None, input_shape=(None, None, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    both = keras.Model(model.input, [model.get_layer("head_pool").input, model.output])
    return tuple(t.numpy() for t in both(images.astype("float64")))


def tiny_regnet(num_classes=3, size=32, seed=0, **kwargs):
    """The tiny RegNetY for `size` x `size` images, initialized from `seed`."""
    return wb.regnet(TINY, num_classes=num_classes, input_shape=(size, size, 3), seed=seed, **kwargs)


def synthetic_machine(speedup=1.0):
    """A planner cost model fitted to points made from known coefficients (per activation / multiply-add),
    `speedup` times faster per image than those."""
    from workbench.plan.machine import blocks, fit
    from workbench.models.design import complexity
    points = []
    for variant, size in (("regnety_200mf", 96), ("regnety_200mf", 160), ("regnety_600mf", 96),
                          ("regnety_600mf", 160)):
        cx = complexity(variant, size, 10)
        points.append(dict(variant=variant, size=size, batch=16, blocks=blocks(variant),
                           params=cx["params"], build=1.0, trace=8.0, predict_trace=1.0, save=1.0,
                           train=(6e-9 * cx["acts"] + 1e-11 * cx["flops"]) / speedup,
                           infer=(1e-9 * cx["acts"] + 2e-12 * cx["flops"]) / speedup))
    return fit(points, "float32", "synthetic", 0.0)


@pytest.fixture(autouse=True)
def same_precision_on_every_cpu(monkeypatch):
    """In-process runs see a CPU without native bf16, so precision="auto" is float32 on every machine and
    no test pays for timing it; tests/train/test_precision.py tests the timed choice itself."""
    import workbench.train.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)


@pytest.fixture
def tiny_model():
    return tiny_regnet()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A loopback Hub as HF_ENDPOINT and an empty Hugging Face cache in HF_HOME."""
    mirror = HubMirror()
    monkeypatch.setenv("HF_ENDPOINT", mirror.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield mirror
    mirror.stop()


def downloads(mirror):
    """The file requests of the mirror's log (huggingface_hub may add telemetry requests of its own)."""
    return [line for line in mirror.log if "/resolve/" in line]


def photo(seed: int, size=(80, 60)) -> Image.Image:
    """A smooth random RGB picture (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def write_every_format(folder, seed: int) -> list[str]:
    """One file per supported format and colour mode; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    im = photo(seed)
    im.save(folder / "rgb.jpg")
    im.convert("L").save(folder / "gray.jpeg")
    im.convert("CMYK").save(folder / "cmyk.jpg")
    im.save(folder / "upper.JPG")
    im.save(folder / "rgb.png")
    im.convert("P").save(folder / "palette.png")
    im.convert("RGBA").save(folder / "rgba.png")
    im.convert("L").save(folder / "gray.PNG")
    im.save(folder / "rgb.bmp")
    im.convert("P").save(folder / "palette.bmp")
    im.convert("1").save(folder / "bilevel.bmp")
    im.convert("P").save(folder / "anim.gif", save_all=True, append_images=[photo(seed + 99).convert("P")])
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def mixed_folder(tmp_path):
    """Two classes in every format, plus corrupt, hidden and non-image files."""
    root = tmp_path / "photos"
    for seed, name in enumerate(["cats", "dogs"]):
        write_every_format(root / name, seed * 10)
    good = photo(5)
    good.save(root / "cats" / ".hidden.jpg")
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "dogs" / "fake.jpg").write_text("this is text, not a JPEG")
    data = (root / "cats" / "rgb.jpg").read_bytes()
    (root / "cats" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return root


def write_classes(root, counts: dict, size=(64, 48)):
    """A folder with `counts[name]` JPEGs per class."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            photo(1000 * c + i, size).save(root / name / f"{i:03d}.jpg")
    return root


def write_tfds(data_dir, name, splits, features=None, version="1.0.0", num_classes=3):
    """A real TFDS-format dataset in `data_dir`: JPEG images and labels, read back by tfds.load."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def split_ds(n, offset):
        images = np.stack([np.asarray(photo(offset + i, (40, 30))) for i in range(n)])
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(n) % num_classes})

    features = features or tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=["red", "green", "blue"])})
    builder = tfds.dataset_builders.TfDataBuilder(
        name=name, version=version, data_dir=str(data_dir), features=features,
        split_datasets={s: split_ds(n, 100 * k) for k, (s, n) in enumerate(splits.items())})
    builder.download_and_prepare()


def write_tf_flowers(data_dir, n=25):
    """A small dataset in tf_flowers' own format (name, version, features) in `data_dir`."""
    import tensorflow_datasets as tfds
    info = tfds.builder("tf_flowers").info
    write_tfds(data_dir, "tf_flowers", {"train": n}, features=info.features,
               version=str(info.version), num_classes=5)


def tensorboard_scalars(folder) -> dict:
    """{tag: {step: value}} of every TensorBoard event file in `folder`."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    out = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return out
