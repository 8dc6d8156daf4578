"""compare_runs: every run below a folder as one table and one figure, on written and on real runs."""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, slow, tensorboard_scalars, tiny_regnet
from PIL import Image

import workbench as wb
from workbench.recipe.outputs import save_outputs
from workbench.report.runs import COLUMNS, compare_runs, find_runs, plot_runs

ROOT = Path(__file__).resolve().parents[2]


def write_metrics(folder, variant, val_accuracy, **more):
    folder.mkdir(parents=True)
    metrics = {"variant": variant, "val_accuracy": val_accuracy[-1], "best_val_accuracy": max(val_accuracy),
               "epochs_run": len(val_accuracy), "history": {"val_accuracy": val_accuracy,
                                                            "val_loss": [1.0] * len(val_accuracy)}, **more}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def test_every_metrics_json_below_the_folder_is_a_row(tmp_path):
    write_metrics(tmp_path / "a", "regnety_200mf", [0.5, 0.7, 0.6], weights="none", wall_seconds=40.5,
                  training_policy={"augment": "none", "unfreeze": "0:all"}, exports={"tflite": {}, "keras": {}})
    write_metrics(tmp_path / "b" / "deep", "regnetx_200mf", [0.4, 0.8], unfreeze="0:head,1:all",
                  training_policy={"augment": "light", "unfreeze": "0:head,1:all"})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text("{ half written")
    with pytest.warns(UserWarning, match="Skipped .*c/metrics.json"):
        table = compare_runs(tmp_path, path=tmp_path / "runs.png")
    assert list(table.columns) == list(COLUMNS)
    assert list(table.run) == ["b/deep", "a"]  # best validation accuracy first
    b, a = table.to_dict("records")
    assert (a["variant"], a["weights"], a["augment"], a["unfreeze"], a["epochs"]) == (
        "regnety_200mf", "none", "none", "0:all", 3)
    assert (a["best_val_accuracy"], a["final_val_accuracy"], a["wall_seconds"], a["exports"]) == (
        0.7, 0.6, 40.5, "keras,tflite")
    assert (b["augment"], b["unfreeze"], b["best_val_accuracy"], b["exports"]) == ("light", "0:head,1:all", 0.8, "")
    assert pd.isna(b["weights"]) and pd.isna(b["wall_seconds"])
    assert a["output_dir"] == str((tmp_path / "a").resolve())
    with Image.open(tmp_path / "runs.png") as im:
        assert im.size[0] > 600
    figure = plot_runs(tmp_path / "b" / "deep")  # a run folder is a folder of one run, named "."
    accuracy = figure.axes[0]
    assert [line.get_label() for line in accuracy.lines] == ["."]
    np.testing.assert_array_equal(accuracy.lines[0].get_ydata(), [0.4, 0.8])


def test_no_runs_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="No metrics.json at or below"):
        find_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected a folder of runs"):
        compare_runs(tmp_path / "missing")


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three real fine-tuning runs written as the recipe writes them: two RegNetY augmentations, one RegNetX."""
    root = tmp_path_factory.mktemp("runs")
    data = wb.load_folder(wb.sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=48,
                          augment=False, verbose=False)
    tiny_x = wb.RegNetConfig(w0=16, wa=16.0, wm=2.0, depth=8, group_width=8, se_ratio=0.0, name="tiny_regnetx")
    runs = {"y_none": (TINY, "none", ""), "y_light": (TINY, "light", "keras"), "x_none": (tiny_x, "none", "")}
    for name, (config, augment, export) in runs.items():
        started = time.perf_counter()
        model = tiny_regnet(seed=0) if config is TINY else wb.regnet(config, num_classes=3, input_shape=(32, 32, 3))
        result = wb.finetune(model, data, epochs=2, lr=2e-3, augment=augment, output_dir=root / name, verbose=0)
        extra = {"weights": "none", "unfreeze": str(result.policy["unfreeze"]), "policy": result.policy,
                 "wall_seconds": round(time.perf_counter() - started, 1)}
        save_outputs(result, data, root / name, config.name, export, extra=extra)
    return root


@slow
def test_compare_three_real_runs(three_runs):
    table = compare_runs(three_runs, path=three_runs / "runs.png")
    assert sorted(table.run) == ["x_none", "y_light", "y_none"]
    for row in table.to_dict("records"):
        m = json.loads((three_runs / row["run"] / "metrics.json").read_text())
        history = m["history"]
        assert row["variant"] == m["variant"] == ("tiny_regnetx" if row["run"] == "x_none" else "tiny_regnety")
        assert row["augment"] == m["training_policy"]["augment"] == row["run"].split("_")[1]
        assert (row["weights"], row["unfreeze"], row["epochs"]) == ("none", m["unfreeze"], 2) == (
            m["weights"], m["unfreeze"], m["epochs_run"])
        assert row["best_val_accuracy"] == m["best_val_accuracy"] == max(history["val_accuracy"])
        assert row["final_val_accuracy"] == history["val_accuracy"][-1]
        assert row["val_accuracy"] == m["val_accuracy"]
        assert row["wall_seconds"] == m["wall_seconds"] > m["train_seconds"] == row["train_seconds"] > 0
        assert row["exports"] == ("keras" if row["run"] == "y_light" else "")
        assert row["output_dir"] == str((three_runs / row["run"]).resolve())
        # every run also wrote TensorBoard event files holding the same validation accuracy per epoch
        scalars = tensorboard_scalars(three_runs / row["run"] / "tensorboard" / "validation")
        assert scalars["epoch_accuracy"] == pytest.approx(dict(enumerate(history["val_accuracy"])), abs=1e-6)
    assert list(table.best_val_accuracy) == sorted(table.best_val_accuracy, reverse=True)
    assert (three_runs / "runs.png").stat().st_size > 10_000


@slow
def test_compare_notebook(three_runs, tmp_path):
    """recipes/compare.ipynb under papermill writes the same table as compare_runs, and the figure."""
    papermill = pytest.importorskip("papermill")
    papermill.execute_notebook(str(ROOT / "recipes" / "compare.ipynb"), str(tmp_path / "compare.ipynb"),
                               parameters={"runs_dir": str(three_runs), "output_dir": str(tmp_path / "out")},
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    written = pd.read_csv(tmp_path / "out" / "runs.csv", keep_default_na=False, na_values=[""])
    expected = compare_runs(three_runs, plot=False)
    assert list(written.run) == list(expected.run)
    np.testing.assert_allclose(written.best_val_accuracy, expected.best_val_accuracy)
    assert (tmp_path / "out" / "runs.png").stat().st_size > 10_000
