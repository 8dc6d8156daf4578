"""What a recipe run leaves in output_dir (metrics.json, model.keras, pictures, exports) and its summary."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from workbench.deploy.export import export_all
from workbench.report.reports import write_report
from workbench.train.distribute import is_chief


def record_plan(metrics: dict, plan, result) -> dict:
    """metrics.json with the plan, its predicted and actual seconds (after the report's lap)."""
    plan.lap("report")
    metrics["plan"] = plan.record(result)
    predicted, actual = metrics["plan"]["predicted_seconds"], metrics["plan"]["actual_seconds"]
    print(f"{'phase':<10} {'predicted':>9} {'actual':>8}")
    for phase, seconds in predicted.items():
        print(f"{phase:<10} {seconds:>8.0f}s {actual[phase]:>7.0f}s")
    for line in metrics["plan"]["adapted"]:
        print(line)
    if is_chief():
        out = Path(metrics["output_dir"]) / "metrics.json"
        saved = json.loads(out.read_text())
        saved["plan"] = metrics["plan"]
        out.write_text(json.dumps(saved, indent=2, default=str))
    return metrics


def summary(metrics: dict, output_dir) -> str:
    """Final recipe summary: accuracy beside macro-F1 (multi-label: mAP), the per-class table with the train
    and val counts, a sentence per class too rare in validation to judge, where the outputs went."""
    out = Path(output_dir)
    multi = metrics.get("task") == "multi_label"
    lead = (f"mAP {metrics['map']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, micro-F1 {metrics['micro_f1']:.3f}, "
            f"exact-match accuracy {metrics['val_accuracy']:.3f}" if multi else
            f"val_accuracy {metrics['val_accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    counts = metrics.get("class_counts", {})
    lines = [f"{metrics['variant']}: {lead}, val_loss {metrics['val_loss']:.3f} after {metrics['epochs_run']} epochs",
             "", f"{'class':<20} {'precision':>9} {'recall':>7} {'f1':>6}"
             + (f" {'AP':>6} {'thresh':>6}" if multi else "") + f" {'train':>6} {'val':>5}"]
    for name, m in metrics["per_class"].items():
        extra = f" {m['ap'] if m['ap'] is not None else float('nan'):>6.3f} {m['threshold']:>6.3f}" if multi else ""
        lines.append(f"{name:<20} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f}{extra} "
                     f"{counts.get('train', {}).get(name, ''):>6} {m['support']:>5}")
    lines += metrics.get("notes", [])
    lines += ["", f"Outputs in {out.resolve()}:"]
    lines += [f"  {p.relative_to(out)}" for p in sorted(out.iterdir()) if p.name != "checkpoints"]
    return "\n".join(lines)


def save_outputs(result, data, output_dir, variant, export, extra=None) -> dict:
    """model.keras, metrics.json and the report pictures, plus the requested exports.

    `metrics["output_dir"]` says where they went: `output_dir`, or on a worker
    of a multi-worker cluster other than the chief a scratch folder (every
    worker evaluates, since that takes them all; only the chief writes).
    """
    out = Path(output_dir) if is_chief() else Path(tempfile.mkdtemp(prefix="worker-outputs-"))
    out.mkdir(parents=True, exist_ok=True)
    metrics = write_report(result.model, data, result, out, variant, extra=extra)
    result.model.save(out / "model.keras")
    if export:
        metrics["exports"] = export_all(result.model, out, export, data.class_names,
                                        calibration=_training_images(data),
                                        validation=None if data.multi_label else data.val,  # top-1 tables
                                        thresholds=metrics.get("thresholds"))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return {**metrics, "output_dir": str(out)}


def _training_images(data):
    """The training images without augmentation (the int8 export's calibration), else the training batches."""
    return data.train_plain if data.train_plain is not None else data.train
