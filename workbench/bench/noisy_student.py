"""Noisy-student benchmark, does pseudo-labelling beat the teacher: `python -m workbench.bench.noisy_student`.

The transfer benchmark's setting (`workbench.bench.transfer`: a 0.4 M-parameter
RegNetY pretrained on a source task, fine-tuned at 32 px for 12 epochs with
the default policy), on two real-image datasets written to disk:

- digits: scikit-learn's handwritten digits 5-9 (source: digits 0-4), 50
  validation images per class;
- textures: crops of scikit-image's brick, grass and gravel photos (source:
  crops of 13 other photos), 40 validation images per class.

Each task keeps `shots` labelled images per class and gives the rest of its
training pool as one folder of unlabelled images (their true classes known to
the benchmark only, to measure the pseudo-labels). A teacher is fine-tuned on
the labelled images, then one noisy student per variant of `VARIANTS`
(`wb.noisy_student` with that teacher); the default variant runs `--rounds`
rounds; `--seeds 0,1` repeats the target runs (data split and order, initialization of the
head, augmentation) with other seeds. It prints validation accuracy (of the returned model of each run: the
best epoch by validation accuracy, teacher and students alike), the
pseudo-labels kept and their true accuracy, and minutes. The defaults of
`workbench.train.noisy_student` cite this command's figures (`--seeds 0,1,2`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from workbench.bench.transfer import EPOCHS, LR, SIZE, _sources, transfer_model, write_all

TASKS = ("digits@10", "digits@50", "textures@10", "textures@50")
VARIANTS = {
    "default": {},
    "soft": {"labels": "soft"},
    "no_threshold": {"labels": "soft", "threshold": 0.0},
    "randaugment": {"labels": "soft", "noise": "crop,randaugment"},
    "no_noise": {"labels": "soft", "noise": "none", "dropout": 0.0, "drop_path": 0.0},
}


def split_task(root: Path, family: str, shots: int) -> tuple[Path, Path, dict]:
    """(labelled folder with train/ and val/, unlabelled folder, {unlabelled file: class}) of a task."""
    out = root / family / f"noisy@{shots}"
    labelled, unlabelled, truth = out / "labelled", out / "unlabelled", {}
    for cls in sorted((root / family / "target" / "pool").iterdir()):
        for k, f in enumerate(sorted(cls.iterdir())):
            target = (labelled / "train" / cls.name / f.name) if k < shots else unlabelled / f"{cls.name}_{f.name}"
            if k >= shots:
                truth[target.name] = cls.name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(f.resolve())
    if not (labelled / "val").exists():
        (labelled / "val").symlink_to((root / family / "target" / "val").resolve())
    return labelled, unlabelled, truth


def builder(source, num_classes: int):
    """A model builder taking the student's noise: the source backbone, a fresh head."""
    return lambda dropout=0.0, drop_path_rate=0.0: transfer_model(source, num_classes, True, dropout=dropout,
                                                                  drop_path_rate=drop_path_rate)


def run_task(root: Path, task: str, source, variants, rounds: int, seed: int = 0) -> dict:
    import workbench as wb
    family, shots = task.split("@")
    labelled, unlabelled, truth = split_task(root, family, int(shots))
    n = sum(1 for _ in (labelled / "train").rglob("*.png"))
    data = wb.load_folder(labelled, image_size=SIZE, batch_size=max(8, min(32, n // 4)), seed=seed, verbose=False)
    build = builder(source, data.num_classes)
    common = dict(epochs=EPOCHS, lr=LR, seed=seed, verbose=0)
    start = time.perf_counter()
    teacher = wb.finetune(build(), data, **common).model
    out = {"teacher_minutes": (time.perf_counter() - start) / 60, "labelled": data.num_train,
           "unlabelled": len(truth)}
    for name in variants:
        r = wb.noisy_student(data, unlabelled, teacher, build, rounds=rounds if name == "default" else 1,
                             truth=truth, **common, **VARIANTS[name])
        out["teacher"] = r.baseline
        out[name] = [{"val_accuracy": s["val_accuracy"], "minutes": s["minutes"],
                      "kept": s["pseudo_labels"]["unique_kept"], "trained_on": s["train_images"],
                      "pseudo_accuracy": s["pseudo_labels"]["accuracy"]} for s in r.rounds[1:]]
        print(f"{task} seed {seed} {name}: teacher {r.baseline:.3f} -> "
              + ", ".join(f"{s['val_accuracy']:.3f}" for s in out[name]), flush=True)
    return out


def table(results: dict, variants) -> str:
    lines = ["Validation accuracy (returned model), teacher vs noisy students; pseudo-label accuracy on the images "
             "kept (true labels); minutes per student", "",
             f"{'task':<12}{'labelled':>9}{'unlab.':>7}{'teacher':>8}{'min':>5}  "
             + "".join(f"{v:>26}" for v in variants)]
    for task, r in results.items():
        cells = []
        for v in variants:
            rounds = r.get(v) or []
            cell = " ".join(f"{s['val_accuracy']:.3f}" for s in rounds)
            pseudo = rounds[0]["pseudo_accuracy"] if rounds else None
            cells.append(f"{cell} pl {pseudo if pseudo is not None else float('nan'):.2f} "
                         f"{sum(s['minutes'] for s in rounds):4.1f}m")
        lines.append(f"{task:<12}{r['labelled']:>9}{r['unlabelled']:>7}{r['teacher']:>8.3f}"
                     f"{r['teacher_minutes']:>5.1f}  " + "".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma list among " + ", ".join(TASKS))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list among " + ", ".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the default variant")
    parser.add_argument("--seeds", default="0", help="comma list of seeds of the target runs (one table each)")
    parser.add_argument("--root", default=None, help="where the images are written (default: the cache)")
    parser.add_argument("--json", default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    import workbench as wb
    root = write_all(Path(args.root) if args.root else wb.cache_root() / "bench" / "transfer-v1")
    tasks, variants = args.tasks.split(","), args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS] + [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown {unknown}: tasks are {', '.join(TASKS)}; variants {', '.join(VARIANTS)}")
    t0 = time.perf_counter()
    sources, notes = _sources(root, tasks)
    results = {seed: {task: run_task(root, task, sources[task.split("@")[0]], variants, args.rounds, seed)
                      for task in tasks} for seed in map(int, args.seeds.split(","))}
    print()
    print("\n".join(notes))
    for seed, by_task in results.items():
        print(f"\nSeed {seed}. " + table(by_task, variants))
    print(f"\nTotal {(time.perf_counter() - t0) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
