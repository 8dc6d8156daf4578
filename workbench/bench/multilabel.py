"""Multi-label and rare-class benchmark: `python -m workbench.bench.multilabel [--epochs 12]`.

Pretrained ImageNet weights cannot be assumed offline, so the backbone is the
transfer benchmark's (`workbench.bench.transfer`): a 0.4 M-parameter RegNetY
pretrained at 32 px on crops of 13 other photos, its backbone copied into a
fresh model for each run. Two tasks on real texture photos written to disk,
same backbone, same epochs, one run each, side by side in one process:

- multi-label: `sample_multilabel` mosaics (label set = the textures pasted in,
  gravel rare), 240 train / 120 val / 120 test. The workbench's run
  (`wb.load_csv` + `wb.finetune` with class_weight="balanced", thresholds chosen
  per class on val) against a plain Keras baseline (sigmoid + binary
  cross-entropy, Adam at the same peak rate, thresholds 0.5) fed the same
  training pipeline. mAP and macro-F1 on the held-out test mosaics.
- rare class, single-label: the sample dataset with gravel cut to `--rare`
  training images (80 brick, 80 grass; 20 of each in val); `wb.finetune` with
  and without class_weight="balanced". Validation macro-F1, accuracy, and the
  rare class's recall.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

import workbench as wb
from workbench.bench.transfer import LR, SIZE, pretrain, transfer_model, write_all
from workbench.data.sample import sample_multilabel
from workbench.report.multilabel import scores_of
from workbench.report.reports import per_class_metrics, predict_dataset
from workbench.train.multilabel import average_precision, choose_thresholds, f1_scores, predict_sets


def _test_as_val(root: Path, folder: Path) -> Path:
    """A copy of labels.csv whose test rows are the validation rows (to evaluate on held-out mosaics)."""
    rows = (root / "labels.csv").read_text().splitlines()
    kept = [rows[0]] + [r.replace(",test", ",val") for r in rows[1:] if not r.endswith(",val")]
    (folder / "test.csv").write_text("\n".join(kept) + "\n")
    return folder / "test.csv"


def _scores(model, dataset) -> dict:
    """mAP and macro-F1 at 0.5 and the per-class scores of `model` on `dataset`."""
    y, p, _ = scores_of(model, dataset)
    return {"y": y, "p": p, "map": float(np.nanmean(average_precision(y, p)))}


def multi_label(source, epochs: int, lr: float) -> dict:
    root = sample_multilabel(train=240, val=120, test=120)
    load = dict(images_dir=root / "images", split_column="split", label_delimiter="|", image_size=SIZE,
                batch_size=32, verbose=False)
    data = wb.load_csv(root / "labels.csv", **load)
    test = wb.load_csv(_test_as_val(root, Path(tempfile.mkdtemp())), **load).val
    out = {}
    start = time.perf_counter()
    model = transfer_model(source, 3, True, classifier_activation="sigmoid")
    result = wb.finetune(model, data, epochs=epochs, lr=lr, class_weight="balanced", verbose=0)
    val = _scores(result.model, data.val)
    thresholds = choose_thresholds(val["y"], val["p"])
    ours = _scores(result.model, test)
    out["workbench"] = {"map": ours["map"], "macro_f1": f1_scores(ours["y"], predict_sets(ours["p"], thresholds))[
        "macro_f1"], "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    plain = transfer_model(source, 3, True, classifier_activation="sigmoid")
    plain.compile(keras.optimizers.Adam(lr), keras.losses.BinaryCrossentropy())
    plain.fit(data.train, epochs=epochs, verbose=0)
    base = _scores(plain, test)
    out["keras_baseline"] = {"map": base["map"], "macro_f1": f1_scores(base["y"], predict_sets(base["p"], 0.5))[
        "macro_f1"], "seconds": time.perf_counter() - start}
    out["test_images"], out["thresholds"] = len(ours["y"]), thresholds.round(3).tolist()
    return out


def _rare_folder(rare: int) -> Path:
    """The sample dataset with only `rare` gravel training images (links to its files)."""
    source, folder = wb.sample_dataset(), Path(tempfile.mkdtemp()) / "rare"
    for split in ("train", "val"):
        for cls in ("brick", "grass", "gravel"):
            files = sorted((source / split / cls).glob("*.jpg"))
            files = files[:rare] if (split, cls) == ("train", "gravel") else files
            (folder / split / cls).mkdir(parents=True)
            for f in files:
                (folder / split / cls / f.name).symlink_to(f)
    return folder


def rare_class(source, epochs: int, lr: float, rare: int) -> dict:
    data = wb.load_folder(_rare_folder(rare), image_size=SIZE, batch_size=32, verbose=False)
    out = {}
    for name, weight in (("unweighted", None), ("balanced", "balanced")):
        model = transfer_model(source, 3, True)
        result = wb.finetune(model, data, epochs=epochs, lr=lr, class_weight=weight, verbose=0)
        y, p = predict_dataset(result.model, data.val)
        per_class = per_class_metrics(y, p.argmax(-1), data.class_names)
        out[name] = {"macro_f1": float(np.mean([m["f1"] for m in per_class.values()])),
                     "accuracy": float(np.mean(p.argmax(-1) == y)), "gravel_recall": per_class["gravel"]["recall"]}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--rare", type=int, default=8, help="gravel training images of the single-label task")
    args = parser.parse_args(argv)
    source, accuracy, seconds = pretrain(write_all(wb.cache_root() / "bench" / "transfer-v1") / "textures" / "source",
                                         "light")
    print(f"Source backbone: {accuracy:.3f} val accuracy on the 13-photo task ({seconds:.0f} s)")
    ml = multi_label(source, args.epochs, args.lr)
    print(f"\nMulti-label mosaics at {SIZE} px, {args.epochs} epochs, {ml['test_images']} held-out test images")
    print(f"{'':<16} {'mAP':>6} {'macro-F1':>9} {'seconds':>8}")
    for who in ("workbench", "keras_baseline"):
        print(f"{who:<16} {ml[who]['map']:>6.3f} {ml[who]['macro_f1']:>9.3f} {ml[who]['seconds']:>8.0f}")
    print(f"(workbench thresholds chosen on val: {ml['thresholds']}; baseline at 0.5)")
    rc = rare_class(source, args.epochs, args.lr, args.rare)
    print(f"\nSingle-label, gravel cut to {args.rare} training images (80 brick, 80 grass), 60 val images")
    print(f"{'class_weight':<16} {'macro-F1':>9} {'accuracy':>9} {'gravel recall':>14}")
    for who, m in rc.items():
        print(f"{who:<16} {m['macro_f1']:>9.3f} {m['accuracy']:>9.3f} {m['gravel_recall']:>14.3f}")
    print(json.dumps({"multi_label": ml, "rare_class": rc, **vars(args)}))


if __name__ == "__main__":
    main()
