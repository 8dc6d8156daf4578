"""Every recipe executed for real with papermill, on tiny settings."""
import json
import pathlib
import subprocess
import sys

import keras
import numpy as np
import papermill as pm
import pytest
from conftest import write_tf_flowers

from workbench import recipe
from workbench import weights as wio

RECIPES = pathlib.Path(__file__).parent.parent / "recipes"
TINY = dict(variant="200mf", weights="none", image_size=32, batch_size=16, epochs=2,
            max_train_images=48)


def run(name, tmp_path, **params):
    out = tmp_path / "out"
    pm.execute_notebook(str(RECIPES / name), str(tmp_path / f"executed-{name}"),
                        parameters={**TINY, "output_dir": str(out), **params},
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    return out


def check_outputs(out, class_names, epochs):
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val_accuracy", "val_loss", "history", "class_names", "variant", "epochs_run"):
        assert key in metrics
    assert metrics["class_names"] == class_names and metrics["variant"] == "regnety_200mf"
    assert metrics["epochs_run"] == epochs and len(metrics["history"]["loss"]) == epochs
    assert 0 <= metrics["val_accuracy"] <= 1 and np.isfinite(metrics["val_loss"])
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    model = keras.models.load_model(out / "model.keras")
    assert model.output_shape == (None, len(class_names))
    return metrics


def test_custom_recipe_on_the_sample_dataset(tmp_path):
    out = run("custom.ipynb", tmp_path, export="keras")
    check_outputs(out, ["brick", "grass", "gravel"], epochs=2)
    assert (out / "export" / "model.keras").exists()


def test_flowers_recipe_on_a_tfds_format_data_dir(tmp_path):
    write_tf_flowers(tmp_path / "tfds")
    out = run("flowers.ipynb", tmp_path, data_dir=str(tmp_path / "tfds"), epochs=1)
    check_outputs(out, ["dandelion", "daisy", "tulips", "sunflowers", "roses"], epochs=1)


@pytest.mark.parametrize("params,sentence", [
    (dict(data_dir="no/such/folder"), "data_dir='no/such/folder' does not exist"),
    (dict(variant="regnety_601mf"), "Unknown RegNet variant 'regnety_601mf'"),
    (dict(unfreeze="0:head,x:stage4"), "is not a schedule"),
    (dict(epochs=0), "epochs must be a positive integer"),
])
def test_bad_parameters_stop_in_the_check_cell(tmp_path, params, sentence):
    with pytest.raises(pm.PapermillExecutionError) as err:
        run("custom.ipynb", tmp_path, **params)
    assert err.value.ename == "RecipeError" and sentence in err.value.evalue
    assert err.value.exec_count == 4   # the parameter-checking cell (after papermill's injected one)


def test_papermill_exit_status_is_nonzero_on_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "papermill", str(RECIPES / "custom.ipynb"),
                           str(tmp_path / "out.ipynb"), "-p", "epochs", "0", "-k", "python3"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "epochs must be a positive integer" in proc.stderr


def test_flowers_without_network_stops_in_the_data_cell(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        run("flowers.ipynb", tmp_path, data_dir=str(tmp_path / "empty"))
    assert err.value.ename == "DatasetUnavailableError"
    assert "tf_flowers" in err.value.evalue and "data_dir" in err.value.evalue


def test_missing_imagenet_weights_fall_back_plainly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(wio, "KERAS_BASE_URL", (tmp_path / "offline").as_uri() + "/")
    monkeypatch.setattr(wio, "CACHE_DIR", str(tmp_path))
    model, pretrained = recipe.build_model("regnety_200mf", "imagenet", 3, 32)
    assert not pretrained and model.output_shape == (None, 3)
    said = capsys.readouterr().out
    assert "ImageNet weights are NOT available" in said and "RANDOM INITIALIZATION" in said
    assert recipe.schedule_for("auto", pretrained, 5) == "0:all"
