"""Every notebook in notebooks/ runs top to bottom under papermill, on tiny settings, and writes real results."""

import json
import tomllib
from pathlib import Path

import nbformat
import pytest
from conftest import slow

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RECIPES = sorted((ROOT / "recipes").glob("*.ipynb"))

# Tiny settings for every notebook; a notebook only receives the ones its parameters cell declares,
# so a new notebook in notebooks/ is executed with these (plus an output_dir) without any change here.
TINY = dict(image_size=32, batch_size=4, n_images=3, epochs=1, steps=2, max_train_images=12,
            train_steps=1, reference_train_steps=1, infer_steps=1, lr_find_steps=5)
# Per-notebook overrides.
TINY_FOR = {
    "02_finetuning_walkthrough": dict(epochs=2, unfreeze="0:head,1:stage4", batch_size=6),
    "04_noisy_student": dict(unlabeled_per_class=20),
}


def _check_tour(out: Path):
    summary = json.loads((out / "tour.json").read_text())
    assert summary["fidelity_max_abs_diff"] < 1e-4, summary["fidelity_max_abs_diff"]
    assert summary["params"] > 1e6 and summary["custom_params"] > 0
    y200 = summary["complexity"]["regnety_200mf"]
    assert abs(y200["gf"] - y200["paper_gf"]) < 0.02 and abs(y200["mparams"] - y200["paper_mparams"]) < 0.1
    z, y = summary["z_vs_y"]["regnetz_b16"], summary["z_vs_y"]["regnety_1.6gf"]
    assert abs(z["gf"] / y["gf"] - 1) < 0.2 and z["features"] == 1536 and z["logits_shape"] == y["logits_shape"]
    assert z["top1"] == 80.728 and summary["complexity"]["regnetz_d8"]["px"] == 256
    for name in ("widths.png", "complexity.png", "predictions.png", "regnety002.h5"):
        assert (out / name).stat().st_size > 1000, name


def _check_finetune(out: Path):
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["epochs_run"] == 2
    assert 0.0 <= summary["val_accuracy"] <= 1.0
    assert summary["suggested_lr"] > 0
    assert [e["stages"] for e in summary["events"]] == [["head"], ["stage4"]]
    assert summary["class_names"] == ["brick", "grass", "gravel"]
    for name in ("batch.png", "class_distribution.png", "lr_find.png", "training_curves.png",
                 "lr_schedule.png", "confusion_matrix.png", "top_losses.png"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "run" / "checkpoints").is_dir()


def _check_speed(out: Path):
    summary = json.loads((out / "speed.json").read_text())
    for who in ("ours", "tf_keras"):
        assert summary[who]["train"] > 0 and summary[who]["inference"] > 0, summary
    assert summary["ratio"]["train"] == pytest.approx(summary["ours"]["train"] / summary["tf_keras"]["train"])
    assert (out / "speed.png").stat().st_size > 1000


def _check_noisy_student(out: Path):
    summary = json.loads((out / "noisy.json").read_text())
    teacher, student = summary["rounds"]
    assert (teacher["role"], student["role"]) == ("teacher", "student")
    assert summary["baseline_val_accuracy"] == teacher["val_accuracy"]
    assert summary["best_val_accuracy"] == max(teacher["val_accuracy"], student["val_accuracy"])
    pseudo = student["pseudo_labels"]
    assert pseudo["unlabeled"] == 3 * 20 and pseudo["known"] == 60 and 0 <= pseudo["accuracy_all"] <= 1
    assert student["train_images"] == 12 + sum(pseudo["kept_per_class"].values())
    assert (out / "noisy_student.png").stat().st_size > 1000 and (out / "model.keras").exists()


CHECKS = {"01_regnet_tour": _check_tour, "02_finetuning_walkthrough": _check_finetune,
          "03_speed": _check_speed, "04_noisy_student": _check_noisy_student}


def _parameters_cell(nb):
    return [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_commit_ready(path):
    """No outputs, python3 kernel, one parameters cell with output_dir, Colab install cell first."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs"
    assert len(_parameters_cell(nb)) == 1 and "output_dir" in _parameters_cell(nb)[0].source
    assert "google.colab" in code[0].source and "%pip install" in code[0].source
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS + RECIPES, ids=lambda p: p.stem)
def test_colab_cell_installs_what_the_notebook_needs(path):
    """The first code cell installs the package with its `recipes` extra: papermill, Jupyter, scikit-image."""
    first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert '%pip install -q "regnet-workbench[recipes] @ git+' in first.source
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    needed = {name.split(">")[0].split("=")[0] for name in extras["recipes"]}
    assert {"papermill", "ipykernel", "scikit-image", "nbformat"} <= needed


def test_every_notebook_is_checked():
    assert {p.stem for p in NOTEBOOKS} == set(CHECKS), "add a _check_ for the new notebook"


@slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    declared = papermill.inspect_notebook(str(path))
    out = tmp_path / "out"
    wanted = {"output_dir": str(out), **TINY, **TINY_FOR.get(path.stem, {})}
    params = {k: v for k, v in wanted.items() if k in declared}
    papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters=params,
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
                               execution_timeout=600)
    executed = nbformat.read(tmp_path / path.name, as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= 1, "the notebook should show its plots inline"
    CHECKS.get(path.stem, lambda out: None)(out)
