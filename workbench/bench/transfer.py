"""Transfer benchmark: which training policy wins, offline, in minutes: `python -m workbench.bench.transfer`.

Pretrained ImageNet weights cannot be assumed (this machine has no network),
so every task brings its own source: a small RegNetY (`config()`, 0.4 M
parameters, 32 px) is pretrained from scratch on a source task, and its
backbone is then fine-tuned on a target task with other classes and few
labels, under each policy of `POLICIES`:

- full: every stage from epoch 0, one learning rate;
- linear_probe: the head only, on the frozen backbone;
- fine_tune: fastai's `fine_tune`: the head for 2 epochs, then every stage
  with discriminative rates (lr_decay 2.6);
- staged: the head for a third of the epochs, then stage by stage from the
  top (`default_schedule`), lr_decay 2.6;
- scratch: the same architecture from random initialization, every stage.

Every image is real and ships with a package, written to disk as PNG files
and read back with `wb.load_folder`:

- digits: scikit-learn's `load_digits` (1,797 handwritten digits, 8x8, from
  the UCI "Optical Recognition of Handwritten Digits" set). Source: digits
  0-4, all images. Target: digits 5-9 with 5, 30 or 100 training images per
  class, 50 validation images per class.
- textures: scikit-image's photographs (`skimage/data`: astronaut, camera,
  coffee, chelsea, rocket, coins, hubble_deep_field, ihc, retina, cell,
  motorcycle_left, moon) and matplotlib's `grace_hopper.jpg`. Source: which
  of those 13 photos a random crop comes from. Target: crops of scikit-image's
  brick, grass and gravel textures (the sample dataset's photos), 30 training
  images per class; training crops from the top three quarters of each photo,
  validation crops from the bottom quarter.
- faces: scikit-image's `lfw_subset.npy` (100 faces from Labeled Faces in
  the Wild and 100 non-face patches, 25x25). Target: face or not, 30 training
  images per class, 40 validation images per class; source: the textures
  task's photo model.

It prints the table (final-epoch validation accuracy: no epoch picked on the
validation set; wall time per run, including tracing) and with `--plot`
draws it. `--augment` adds a sweep of the augmentation levels on the `full`
policy, `--extras` the BatchNorm re-estimation and EMA on the scratch and full
policies. The figures quoted in `workbench.train.policy` come from this command.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from workbench.data.sample import crops

SIZE = 32
EPOCHS = 12
LR = 2e-3
SOURCE_EPOCHS = 15
POLICIES = ("full", "linear_probe", "fine_tune", "staged", "scratch")
TASKS = ("digits@5", "digits@30", "digits@100", "textures@30", "faces@30")
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "hubble_deep_field", "ihc", "retina",
          "cell", "motorcycle_left", "moon")
TEXTURES = ("brick", "grass", "gravel")


def config():
    from workbench.models.design import RegNetConfig
    return RegNetConfig(w0=24, wa=24.0, wm=2.0, depth=6, group_width=8, se_ratio=0.25, name="bench_regnety")


# ---------------------------------------------------------------- images on disk

def _save(folder: Path, name: str, array: np.ndarray, side: int):
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8)).convert("RGB")
    image.resize((side, side), Image.Resampling.BILINEAR).save(folder / f"{name}.png")


def write_digits(root: Path, rng) -> None:
    """source/{train,val}/0..4 and target/{pool,val}/5..9: digits padded by one pixel, at 40 px."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.pad(digits.images * (255 / 16), ((0, 0), (1, 1), (1, 1)))
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        task, n_val = ("source", 30) if label < 5 else ("target", 50)
        for k, i in enumerate(idx):
            split = "val" if k < n_val else ("train" if task == "source" else "pool")
            _save(root / "digits" / task / split / str(label), f"{i:04d}", images[i], 40)


def _photo(name: str) -> Image.Image:
    if name == "grace_hopper":
        import matplotlib.cbook
        return Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    import skimage
    path = next((Path(skimage.__file__).parent / "data").glob(f"{name}.*"))
    return Image.open(path).convert("RGB")


def write_photos(root: Path, rng) -> None:
    """source/{train,val}/<photo> (13 photos) and target/{pool,val}/<texture>: crops at 40 px."""
    for task, names, n_train, n_val in (("source", PHOTOS + ("grace_hopper",), 80, 20),
                                        ("target", TEXTURES, 100, 40)):
        for name in names:
            photo = _photo(name)
            split = "train" if task == "source" else "pool"
            for s, (top, bottom, n) in {split: (0.0, 0.75, n_train), "val": (0.75, 1.0, n_val)}.items():
                for k, crop in enumerate(crops(photo, top, bottom, n, rng, sides=(48, 160), out=None, turn=False)):
                    _save(root / "textures" / task / s / name, f"{k:03d}", np.asarray(crop), 40)


def write_faces(root: Path, rng) -> None:
    """target/{pool,val}/{face,other} from scikit-image's LFW subset, at 40 px."""
    import skimage
    faces = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")
    for label, block in (("face", faces[:100]), ("other", faces[100:])):
        for k, i in enumerate(rng.permutation(len(block))):
            split = "val" if k < 40 else "pool"
            _save(root / "faces" / "target" / split / label, f"{i:03d}", block[i] * 255, 40)


def write_all(root: Path) -> Path:
    rng = np.random.default_rng(0)
    if not (root / ".complete").exists():
        write_digits(root, rng)
        write_photos(root, rng)
        write_faces(root, rng)
        (root / ".complete").write_text("transfer-v1\n")
    return root


def shots_folder(root: Path, family: str, shots: int) -> Path:
    """target with `shots` training images per class (the first ones of the pool, by file name)."""
    out = root / family / f"target@{shots}"
    if not out.exists():
        for cls in sorted((root / family / "target" / "pool").iterdir()):
            files = sorted(cls.iterdir())[:shots]
            for f in files:
                (out / "train" / cls.name).mkdir(parents=True, exist_ok=True)
                (out / "train" / cls.name / f.name).symlink_to(f.resolve())
        (out / "val").symlink_to((root / family / "target" / "val").resolve())
    return out


# ---------------------------------------------------------------- runs

def _load(folder, augment, batch=32):
    import workbench as wb
    n = sum(1 for _ in Path(folder, "train").rglob("*.png"))
    return wb.load_folder(folder, image_size=SIZE, batch_size=max(8, min(batch, n // 4)), seed=0,
                          augment=augment, verbose=False)


def pretrain(folder: Path, augment: str):
    """The source model: trained from scratch on the source task; returns (model, val accuracy, seconds)."""
    import workbench as wb
    data = _load(folder, augment)
    model = wb.regnet(config(), num_classes=data.num_classes, input_shape=(SIZE, SIZE, 3), seed=0)
    t0 = time.perf_counter()
    r = wb.finetune(model, data, epochs=SOURCE_EPOCHS, unfreeze="0:all", lr=LR, lr_decay=1.0, pretrained=False,
                    restore_best=False, verbose=0)
    return r.model, r.history["val_accuracy"][-1], time.perf_counter() - t0


def transfer_model(source, num_classes: int, pretrained: bool, **noise):
    """A fresh model for the target classes, its backbone copied from `source` when `pretrained`;
    `noise`: `dropout` and `drop_path_rate` of `wb.regnet`."""
    import workbench as wb
    from workbench.models.contract import stage_of
    model = wb.regnet(config(), num_classes=num_classes, input_shape=(SIZE, SIZE, 3), seed=1, **noise)
    if pretrained:
        for layer in source.layers:
            if stage_of(layer.name) not in (None, "head") and layer.weights:
                model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


def schedule_of(policy: str) -> tuple[str, float, bool]:
    """(unfreeze, lr_decay, pretrained) of a policy name."""
    from workbench.train.schedule import Schedule, default_schedule
    return {"full": ("0:all", 1.0, True), "linear_probe": ("0:head", 1.0, True),
            "fine_tune": ("0:head,2:all", 2.6, True),
            "staged": (str(Schedule.parse(default_schedule(EPOCHS))), 2.6, True),
            "scratch": ("0:all", 1.0, False)}[policy]


def run(folder: Path, source, policy: str, augment: str, epochs: int = EPOCHS, **extras) -> dict:
    import workbench as wb
    unfreeze, decay, pretrained = schedule_of(policy)
    data = _load(folder, augment)
    model = transfer_model(source, data.num_classes, pretrained)
    t0 = time.perf_counter()
    r = wb.finetune(model, data, epochs=epochs, unfreeze=unfreeze, lr=LR, lr_decay=decay, pretrained=pretrained,
                    restore_best=False, verbose=0, bn_refresh=extras.pop("bn_refresh", False), **extras)
    return {"accuracy": r.history["val_accuracy"][-1], "minutes": (time.perf_counter() - t0) / 60,
            "best": max(r.history["val_accuracy"])}


def _sources(root: Path, tasks):
    """Pretrain the source model of each family the tasks need, once."""
    sources, notes = {}, []
    for family, augment in (("digits", "crop"), ("textures", "light")):
        if any(t.split("@")[0] in ((family,) if family == "digits" else ("textures", "faces")) for t in tasks):
            model, acc, sec = pretrain(root / family / "source", augment)
            sources[family] = model
            notes.append(f"source {family}: {acc:.3f} val accuracy after {SOURCE_EPOCHS} epochs ({sec / 60:.1f} min)")
            print(notes[-1], flush=True)
    sources["faces"] = sources.get("textures")
    return sources, notes


def table(results: dict, rows, columns, title: str) -> str:
    width = max(len(c) for c in columns) + 1
    lines = [title, f"{'task':<12}" + "".join(f"{c:>{width + 7}}" for c in columns)]
    for task in rows:
        cells = []
        for c in columns:
            r = results.get(task, {}).get(c)
            cells.append(f"{r['accuracy']:.3f} {r['minutes']:4.2f}m".rjust(width + 7) if r else "-".rjust(width + 7))
        lines.append(f"{task:<12}" + "".join(cells))
    return "\n".join(lines)


def plot(results: dict, columns, path):
    from workbench.utils.figures import finish, plt
    tasks = list(results)
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 3, 4))
    width = 0.8 / len(columns)
    for i, c in enumerate(columns):
        ax.bar(np.arange(len(tasks)) + i * width, [results[t].get(c, {}).get("accuracy", np.nan) for t in tasks],
               width, label=c)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks)
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=len(columns))
    ax.set_title("Transfer benchmark: policy by task")
    plt.close(finish(fig, path))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma list among " + ", ".join(TASKS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--augment", action="store_true", help="also sweep augmentation on the full policy")
    parser.add_argument("--extras", action="store_true", help="also BatchNorm re-estimation and EMA")
    parser.add_argument("--epochs", default="", help="also sweep the number of epochs (e.g. 3,6,12,24) on the "
                        "policies given: the figures behind the budget planner's training curve")
    parser.add_argument("--root", default=None, help="where the images are written (default: the cache)")
    parser.add_argument("--plot", default=None, help="write the table as a bar chart (PNG)")
    parser.add_argument("--json", default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    import workbench as wb
    root = write_all(Path(args.root) if args.root else wb.cache_root() / "bench" / "transfer-v1")
    tasks, policies = args.tasks.split(","), args.policies.split(",")
    t0 = time.perf_counter()
    sources, notes = _sources(root, tasks)
    results, sweeps, extras, lengths = {}, {}, {}, {}
    for task in tasks:
        family, shots = task.split("@")
        folder = shots_folder(root, family, int(shots))
        results[task] = {}
        for policy in policies:
            results[task][policy] = run(folder, sources[family], policy, "none")
            print(f"{task} {policy}: {results[task][policy]}", flush=True)
        if args.augment:
            sweeps[task] = {"none": results[task].get("full")}
            for level in ("flip,crop", "crop", "strong"):
                sweeps[task][level] = run(folder, sources[family], "full", level)
                print(f"{task} full augment={level}: {sweeps[task][level]}", flush=True)
        for epochs in [int(e) for e in args.epochs.split(",") if e]:
            for policy in policies:
                lengths.setdefault(f"{task} {policy}", {})[f"{epochs} ep"] = run(folder, sources[family], policy,
                                                                                  "none", epochs=epochs)
                print(f"{task} {policy} {epochs} epochs: {lengths[f'{task} {policy}'][f'{epochs} ep']}", flush=True)
        if args.extras:
            extras[task] = {}
            for name, policy, kw in (("scratch+bn_refresh", "scratch", dict(bn_refresh=True)),
                                     ("full+ema", "full", dict(ema=True))):
                extras[task][name] = run(folder, sources[family], policy, "none", **kw)
                print(f"{task} {name}: {extras[task][name]}", flush=True)
    print()
    print("\n".join(notes))
    print(table(results, tasks, policies, f"Validation accuracy (last epoch) and minutes per run, {EPOCHS} epochs, "
                                          f"{SIZE}px, augment none:"))
    if sweeps:
        print(table(sweeps, tasks, list(next(iter(sweeps.values()))), "\nAugmentation, policy full:"))
    if extras:
        print(table(extras, tasks, list(next(iter(extras.values()))), "\nExtras:"))
    if lengths:
        print(table(lengths, list(lengths), list(next(iter(lengths.values()))), "\nEpochs:"))
    print(f"\nTotal {(time.perf_counter() - t0) / 60:.1f} min")
    if args.plot:
        plot(results, policies, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps({"policies": results, "augment": sweeps, "extras": extras,
                                               "epochs": lengths, "notes": notes}, indent=1))


if __name__ == "__main__":
    main()
