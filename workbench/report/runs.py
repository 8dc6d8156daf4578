"""Runs side by side: every run folder (one with a `metrics.json`) below a path, as one table and one figure.

`compare_runs("runs/")` reads what each run recorded (`write_report` and the recipes write
`metrics.json`) and returns a pandas DataFrame, one row per run, best validation accuracy first;
`plot_runs` draws every run's validation accuracy and loss per epoch on one figure.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from workbench.utils.figures import finish, plt

__all__ = ["COLUMNS", "compare_runs", "find_runs", "plot_runs"]

COLUMNS = ("run", "variant", "weights", "pretrained", "image_size", "unfreeze", "augment", "epochs",
           "best_val_accuracy", "final_val_accuracy", "val_accuracy", "wall_seconds", "train_seconds",
           "exports", "output_dir")


def find_runs(runs_dir) -> list[tuple[str, dict]]:
    """[(name, metrics)] of every folder at or below `runs_dir` holding a readable metrics.json, by name.

    A run's name is its folder relative to `runs_dir` ("." for `runs_dir` itself); an unreadable
    metrics.json (a run still writing it, say) is skipped with a warning.
    """
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"No folder {str(runs_dir)!r}: expected a folder of runs (each an output_dir "
                                f"with a metrics.json).")
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            warnings.warn(f"Skipped {path}: {err}", stacklevel=2)
            continue
        metrics["output_dir"] = str(path.parent.resolve())
        runs.append((path.parent.relative_to(root).as_posix(), metrics))
    if not runs:
        raise FileNotFoundError(f"No metrics.json at or below {str(runs_dir)!r}: every run (wb.write_report, "
                                f"recipes/*.ipynb) writes one into its output_dir.")
    return runs


def _row(name: str, m: dict) -> dict:
    """One run's row of the table, from its metrics.json."""
    policy = m.get("training_policy") or m.get("policy") or {}
    val = [v for v in (m.get("history") or {}).get("val_accuracy", []) if v is not None]
    return {"run": name, "variant": m.get("variant"), "weights": m.get("weights"), "pretrained": m.get("pretrained"),
            "image_size": m.get("image_size"), "unfreeze": m.get("unfreeze", policy.get("unfreeze")),
            "augment": policy.get("augment"), "epochs": m.get("epochs_run"),
            "best_val_accuracy": m.get("best_val_accuracy", max(val, default=None)),
            "final_val_accuracy": val[-1] if val else None, "val_accuracy": m.get("val_accuracy"),
            "wall_seconds": m.get("wall_seconds"), "train_seconds": m.get("train_seconds"),
            "exports": ",".join(sorted(m.get("exports") or {})), "output_dir": m["output_dir"]}


def plot_runs(runs, path=None):
    """Validation accuracy and loss per epoch of every run on one figure; `runs` a folder or `find_runs`' list."""
    runs = find_runs(runs) if isinstance(runs, (str, Path)) else runs
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, ax in zip(("val_accuracy", "val_loss"), axes):
        for name, m in runs:
            values = np.asarray([np.nan if v is None else v for v in (m.get("history") or {}).get(key, [])], "float64")
            if len(values):
                ax.plot(np.arange(1, len(values) + 1), values, "o-", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(key.replace("_", " "))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(f"{len(runs)} runs: validation curves")
    return finish(fig, path)


def compare_runs(runs_dir="runs", plot: bool = True, path=None):
    """Every run below `runs_dir` as a DataFrame (COLUMNS), best validation accuracy first.

    plot: also draw the runs' validation curves on one figure (`plot_runs`; shown inline in a
    notebook), saved to `path` when given.
    """
    import pandas as pd

    runs = find_runs(runs_dir)
    table = pd.DataFrame([_row(name, m) for name, m in runs], columns=list(COLUMNS))
    table = table.sort_values(["best_val_accuracy", "run"], ascending=[False, True], kind="stable")
    if plot or path:
        plot_runs(runs, path)
    return table.reset_index(drop=True)
