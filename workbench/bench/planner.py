"""Budget planner benchmark: plans for N minutes, predicted vs actual seconds, accuracy against the defaults.

    python -m workbench.bench.planner --datasets sample,digits --minutes 2,5,15

For each dataset and budget, two runs, each in its own process and each
timed from the moment planning starts to the written report, exactly the
steps of `recipes/custom.ipynb` with `budget_minutes`:

- plan: `wb.plan` over every RegNetX/Y (the machine profile is measured
  once, before the first run, and then read from the cache);
- default: the recipe's defaults (RegNetY-200MF at 128 px, the training
  policy) with the epochs that fill the same budget, the same guard keeping
  it, so the two differ only in what the planner chose.

Datasets (real images on disk, offline): `sample`, the workbench's sample
(brick, grass, gravel photos at 128 px, 240 training / 60 validation images),
and `digits`, scikit-learn's 1,797 handwritten digits (10 classes, 8x8 scans
written as 40 px PNGs; 1,527 training / 270 validation). Pretrained weights are
not reachable here, so both runs train from random initialization
(`--weights imagenet` plans for the ImageNet weights and, offline, runs the
plan from random initialization: same cost, so its times are still checked).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT = dict(candidates=["regnety_200mf"], sizes=(128,))


def write_digits(root: Path) -> Path:
    """scikit-learn's digits, one folder per class, as 40 px PNGs (written once)."""
    from workbench.bench.transfer import _save
    if not (root / ".complete").exists():
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = np.pad(digits.images * (255 / 16), ((0, 0), (1, 1), (1, 1)))
        for i, (image, label) in enumerate(zip(images, digits.target)):
            _save(root / str(label), f"{i:04d}", image, 40)
        (root / ".complete").write_text("digits-v1\n")
    return root


def folder_of(name: str) -> Path:
    import workbench as wb
    if name == "sample":
        return Path(wb.sample_dataset())
    if name == "digits":
        return write_digits(wb.cache_root() / "bench" / "digits-v1")
    raise ValueError(f"Unknown dataset {name!r}: use sample or digits.")


def one(dataset: str, minutes: float, which: str, weights, out: Path) -> dict:
    """One budgeted run as the custom recipe does it; returns the plan's record and the accuracy."""
    import workbench as wb
    from workbench.plan import planner
    from workbench import recipe
    from workbench.models.regnet import regnet

    folder = folder_of(dataset)

    def load(image_size, batch_size):
        return wb.load_folder(folder, image_size=image_size, batch_size=batch_size, val_split=0.15, seed=0,
                              verbose=False)

    data = load(128, 32)
    started = time.perf_counter()
    extra = DEFAULT if which == "default" else {}
    plan = planner.plan(data, minutes, weights=weights, started=started, verbose=False, **extra)
    if plan.image_size != data.image_size:
        data = load(plan.image_size, plan.batch_size)
    plan.lap("setup")
    model = regnet(plan.variant, num_classes=data.num_classes, input_shape=(plan.image_size,) * 2 + (3,))
    pretrained = plan.weights is not None  # offline the weights stay random: the same cost, the same policy
    policy = wb.training_policy(plan.unfreeze, plan.epochs, pretrained)
    plan.lap("build")
    result = wb.finetune(model, data, epochs=plan.epochs, lr=0.002, pretrained=pretrained, output_dir=out,
                         callbacks=[plan.guard()], verbose=0, **policy.finetune_kwargs())
    plan.lap("training")
    metrics = recipe.save_outputs(result, data, out, plan.variant, [])
    metrics = recipe.record_plan(metrics, plan, result)
    return {"dataset": dataset, "minutes": minutes, "which": which, "table": plan.table(),
            "val_accuracy": metrics["val_accuracy"], "plan": metrics["plan"]}


def summary(rows) -> str:
    lines = [f"{'dataset':<8} {'min':>4} {'run':<8} {'variant':<14} {'px':>4} {'epochs':>9} {'predicted':>9} "
             f"{'actual':>7} {'error':>6} {'val acc':>7}"]
    for r in rows:
        p = r["plan"]
        pred, act = p["predicted_seconds"]["total"], p["actual_seconds"]["total"]
        lines.append(f"{r['dataset']:<8} {r['minutes']:>4g} {r['which']:<8} {p['variant']:<14} {p['image_size']:>4} "
                     f"{p['epochs_run']:>4}/{p['epochs']:<4} {pred:>8.0f}s {act:>6.0f}s {act / pred - 1:>+6.0%} "
                     f"{r['val_accuracy']:>7.3f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sample,digits")
    parser.add_argument("--minutes", default="2,5,15")
    parser.add_argument("--runs", default="plan,default", help="plan, default or both")
    parser.add_argument("--weights", default="none", help="none (random initialization) or a tag, e.g. imagenet")
    parser.add_argument("--json", default=None, help="write every run's record as JSON")
    parser.add_argument("--one", nargs=3, metavar=("DATASET", "MINUTES", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    weights = None if args.weights == "none" else args.weights
    if args.one:
        dataset, minutes, which = args.one
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT " + json.dumps(one(dataset, float(minutes), which, weights, Path(tmp) / "out")))
        return
    from workbench.plan.machine import measure
    measure(remeasure=True)   # once, before the runs (then read from the cache)
    rows = []
    for dataset in args.datasets.split(","):
        folder_of(dataset)
        for minutes in args.minutes.split(","):
            for which in args.runs.split(","):
                proc = subprocess.run([sys.executable, "-m", "workbench.bench.planner", "--one", dataset, minutes,
                                       which, "--weights", args.weights], capture_output=True, text=True)
                found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if not found:
                    print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{dataset} {minutes} {which} failed")
                rows.append(json.loads(found[0][len("RESULT "):]))
                print(rows[-1]["table"] + "\n" + "\n".join(rows[-1]["plan"]["adapted"]), flush=True)
                print(summary(rows[-1:]), flush=True)
    print("\n" + summary(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
