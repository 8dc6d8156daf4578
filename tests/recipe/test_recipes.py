"""Every recipe executed for real with papermill, on tiny settings."""
import json
import pathlib
import shutil
import subprocess
import sys

import keras
import nbformat
import numpy as np
import papermill as pm
import pytest
from conftest import slow, synthetic_machine, write_tf_flowers

from workbench import recipe

from workbench.utils import runtime
from workbench.train.unfreeze import unfreeze_policy
from workbench.recipe.weights import prepare_weights
from workbench.models import convert as wio

RECIPES = pathlib.Path(__file__).parents[2] / "recipes"
TINY = dict(variant="200mf", weights="none", image_size=32, batch_size=16, epochs=2,
            max_train_images=48)


def run(name, tmp_path, **params):
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out"
    pm.execute_notebook(str(RECIPES / name), str(tmp_path / f"executed-{name}"),
                        parameters={**TINY, "output_dir": str(out), **params},
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    return out


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    """The custom recipe on the sample dataset with the default seed, exporting .keras."""
    return run("custom.ipynb", tmp_path_factory.mktemp("custom"), export="keras")


def metrics_of(out):
    return json.loads((out / "metrics.json").read_text())


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


def test_custom_recipe_on_the_sample_dataset(custom_run):
    metrics = check_outputs(custom_run, ["brick", "grass", "gravel"], epochs=2)
    assert (custom_run / "export" / "model.keras").exists()
    assert metrics["seed"] == 0 and metrics["unfreeze"] == "0:all" and metrics["lr_decay"] == 1.0
    policy = metrics["policy"]   # what was actually used, every "auto" resolved
    assert set(policy) >= {"unfreeze", "lr_decay", "augment", "ema", "tta", "progressive", "bn_refresh"}
    assert policy["augment"] in ("none", "light", "strong", "crop") and metrics["drop_path"] == 0.0
    assert metrics["wall_seconds"] > metrics["train_seconds"] > 0
    assert list((custom_run / "tensorboard" / "validation").glob("events.out.tfevents.*"))


@slow
def test_same_seed_same_numbers(custom_run, tmp_path):
    first = metrics_of(custom_run)
    again = metrics_of(run("custom.ipynb", tmp_path / "again"))
    other = metrics_of(run("custom.ipynb", tmp_path / "other", seed=1))
    print(f"\nseed 0: loss {first['history']['loss']}\nseed 0: loss {again['history']['loss']}"
          f"\nseed 1: loss {other['history']['loss']}")
    for key in ("history", "val_accuracy", "val_loss", "confusion_matrix", "per_class"):
        assert again[key] == first[key], key
    assert all(a != b for a, b in zip(first["history"]["loss"], other["history"]["loss"]))


@pytest.mark.skipif(runtime.gpu_driver_present(), reason="CUDA's messages are kept where a driver exists")
def test_no_cuda_probing_noise_on_a_cpu_machine(custom_run):
    executed = (custom_run.parent / "executed-custom.ipynb").read_text()
    assert "Train" in executed or "epoch" in executed.lower()
    for line in ("Could not find cuda drivers", "cuInit", "absl::InitializeLog"):
        assert line not in executed, line


@slow
def test_flowers_recipe_on_a_tfds_format_data_dir(tmp_path):
    write_tf_flowers(tmp_path / "tfds")
    out = run("flowers.ipynb", tmp_path, data_dir=str(tmp_path / "tfds"), epochs=1)
    check_outputs(out, ["dandelion", "daisy", "tulips", "sunflowers", "roses"], epochs=1)


@pytest.mark.parametrize("params,sentence", [
    (dict(data_dir="no/such/folder"), "data_dir='no/such/folder' does not exist"),
    (dict(variant="regnety_601mf"), "Unknown RegNet variant 'regnety_601mf'"),
    (dict(unfreeze="0:head,x:stage4"), "is not a schedule"),
    (dict(epochs=0), "epochs must be a positive integer"),
    (dict(weights="tv2"), "weights='tv2' is not a tag of regnety_200mf"),
    (dict(weights="photos/model.h5"), "weights='photos/model.h5': no such file"),
    (dict(augment="flip,zoom"), "Unknown augmentation 'zoom': use 'auto', 'none', 'light', 'strong'"),
    (dict(ema="yes"), "ema must be True or False"),
    (dict(drop_path=1.5), "drop_path must be a number in [0, 1)"),
    (dict(unlabeled_dir="no/such/unsorted"), "unlabeled_dir='no/such/unsorted' does not exist"),
    (dict(unlabeled_dir="sample", data_dir="."), "unlabeled_dir='sample' is the sample dataset's"),
])
def test_bad_parameters_are_refused_by_the_check_cell(tmp_path, monkeypatch, params, sentence):
    """The recipe's own parameters and checking cells, executed in this process with `params` injected
    between them as papermill does (a kernel per case would cost ~9 s each)."""
    code = [c for c in nbformat.read(RECIPES / "custom.ipynb", as_version=4).cells if c.cell_type == "code"]
    at = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    namespace = {}
    exec(code[at].source, namespace)
    namespace.update({**TINY, "output_dir": str(tmp_path / "out"), **params})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)   # the cell sets it; restored after
    with pytest.raises(recipe.RecipeError) as err:
        exec(code[at + 1].source, namespace)
    assert sentence in str(err.value)


def test_a_bad_parameter_stops_the_notebook_in_the_check_cell(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        run("custom.ipynb", tmp_path, variant="regnety_601mf")
    assert err.value.ename == "RecipeError" and "Unknown RegNet variant 'regnety_601mf'" in err.value.evalue
    assert err.value.exec_count == 4   # the parameter-checking cell (after papermill's injected one)


@pytest.mark.parametrize("params,sentence", [
    (dict(student_rounds=0), "student_rounds must be a positive integer"),
    (dict(student_variant="regnety_601mf"), "Unknown RegNet variant 'regnety_601mf'"),
])
def test_bad_noisy_student_parameters(params, sentence):
    base = dict(variant="200mf", weights="none", image_size="auto", batch_size=8, epochs=1, unfreeze="auto",
                lr=1e-3, lr_decay="auto", seed=0, max_train_images=0, output_dir="out", export="")
    with pytest.raises(recipe.RecipeError, match=sentence):
        recipe.check_params(**base, **params)
    assert recipe.check_params(**base, student_variant="y400mf").student_variant == "regnety_400mf"
    with pytest.raises(recipe.RecipeError, match="'ra3' is not a tag of regnety_400mf"):   # the student's weights
        recipe.check_params(**{**base, "variant": "regnetz_b16", "weights": "ra3"}, student_variant="y400mf",
                            unlabeled_dir="sample")


def test_bad_budget_parameters():
    base = dict(variant="200mf", weights="none", image_size="auto", batch_size=8, epochs=1, unfreeze="auto",
                lr=1e-3, lr_decay="auto", seed=0, max_train_images=0, output_dir="out", export="")
    with pytest.raises(recipe.RecipeError, match="budget_minutes must be a positive finite number"):
        recipe.check_params(**base, budget_minutes=-2)
    with pytest.raises(recipe.RecipeError, match="budget_minutes plans the variant, its weights tag"):
        recipe.check_params(**base, budget_minutes=5, unlabeled_dir="sample")
    assert recipe.check_params(**base, budget_minutes=0.5).variant == "regnety_200mf"


@slow
def test_custom_recipe_within_a_budget(tmp_path, monkeypatch):
    """budget_minutes: the plan is printed, run and recorded with predicted and actual seconds; a machine
    profile that promises 1000x this machine's speed makes the guard cut the epochs to keep the budget."""
    from dataclasses import asdict

    from workbench.plan.machine import machine_key, profile_path
    monkeypatch.setenv("REGNET_WORKBENCH_CACHE", str(tmp_path / "cache"))
    profile = profile_path(machine_key("float32"))
    profile.parent.mkdir(parents=True)
    profile.write_text(json.dumps(asdict(synthetic_machine(speedup=1000))))
    minutes = 0.75
    out = run("custom.ipynb", tmp_path, budget_minutes=minutes, max_train_images=0)  # all 240: epochs cost
    metrics = metrics_of(out)
    plan = metrics["plan"]
    assert plan["budget_minutes"] == minutes and metrics["variant"] == plan["variant"]
    assert plan["weights"] is None and plan["score"] == pytest.approx(-plan["resolution"] - plan["undertrained"])
    assert 1 <= plan["epochs_run"] == metrics["epochs_run"] < plan["epochs"]
    assert "training stops after epoch" in plan["adapted"][-1]
    predicted, actual = plan["predicted_seconds"], plan["actual_seconds"]
    assert set(predicted) == set(actual) == {"measuring", "setup", "build", "training", "report", "total"}
    assert actual["total"] <= minutes * 60 * 1.2        # the guard kept it (the profile was 100x off)
    assert predicted["total"] <= minutes * 60
    saved = keras.models.load_model(out / "model.keras")
    assert saved.input_shape == (None, plan["image_size"], plan["image_size"], 3)


def test_papermill_exit_status_is_nonzero_on_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "papermill", str(RECIPES / "custom.ipynb"),
                           str(tmp_path / "out.ipynb"), "-p", "epochs", "0", "-k", "python3"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "epochs must be a positive integer" in proc.stderr
    assert "cuInit" not in proc.stderr and "Could not find cuda drivers" not in proc.stderr


def test_flowers_without_network_stops_in_the_data_cell(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as err:
        run("flowers.ipynb", tmp_path, data_dir=str(tmp_path / "empty"))
    assert err.value.ename == "DatasetUnavailableError"
    assert "tf_flowers" in err.value.evalue and "data_dir" in err.value.evalue


def test_missing_keras_weights_fall_back_plainly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(wio, "KERAS_BASE_URL", (tmp_path / "offline").as_uri() + "/")
    monkeypatch.setattr(wio, "CACHE_DIR", str(tmp_path))
    weights_file, size = prepare_weights("regnety_200mf", "keras", 32, default_size=128)
    model, pretrained = recipe.build_model("regnety_200mf", weights_file, 3, size)
    assert weights_file is None and not pretrained and model.output_shape == (None, 3)
    said = capsys.readouterr().out
    assert "weights are NOT available" in said and "RANDOM INITIALIZATION" in said
    policy = unfreeze_policy("auto", 5, pretrained, lr_decay=2.6)
    assert str(policy.schedule) == "0:all" and policy.lr_decay == 1.0


def test_check_params_gives_values():
    """The checked parameters come out parsed: a Schedule, the weights resolved once, the formats listed."""
    p = recipe.check_params(variant="600mf", weights="pycls", image_size=64, batch_size=8, epochs=3,
                            unfreeze="0:head, 1:stage4", lr=1e-3, lr_decay=2, seed=0, max_train_images=0,
                            output_dir="out", export="keras,tflite")
    assert p.variant == "regnety_600mf" and str(p.unfreeze) == "0:head,1:stage4" and p.lr_decay == 2.0
    assert p.weights.spec == "pycls" and p.weights.info.tag.startswith("pycls") and p.export == ["keras", "tflite"]
    assert p.output_dir == pathlib.Path("out") and p.student_weights is p.weights
    auto = recipe.check_params(**{**TINY, "unfreeze": "auto", "lr": 1e-3, "lr_decay": "auto", "seed": 0,
                                  "output_dir": "out", "export": ""})
    assert auto.unfreeze is None and auto.weights.spec is None


@slow
def test_custom_recipe_training_policy_parameters(tmp_path):
    """augment, ema, tta, drop_path and progressive reach the run, and metrics.json records what was used."""
    out = run("custom.ipynb", tmp_path, image_size=64, epochs=3, augment="crop,mixup", ema=True, tta=True,
              drop_path=0.1, progressive=True, max_train_images=32)
    metrics = check_outputs(out, ["brick", "grass", "gravel"], epochs=3)
    policy = metrics["policy"]
    assert policy["augment"] == "crop,mixup" and policy["ema"] and policy["tta"] and policy["progressive"]
    assert policy["bn_refresh"] is True                         # random initialization: see workbench.train.policy
    assert 0 <= metrics["tta_val_accuracy"] <= 1 and metrics["evaluation"]["tta_views"] == 5
    assert metrics["progressive"]["sides"] == [40, 48, 64] and metrics["drop_path"] == 0.1
    model = keras.models.load_model(out / "model.keras")
    assert any(layer.name.endswith("_drop_path") for layer in model.layers)


@slow
def test_custom_recipe_noisy_student_on_the_sample(tmp_path):
    """unlabeled_dir="sample": a teacher, one student, every round in metrics.json, the figure, the best model."""
    out = run("custom.ipynb", tmp_path, unlabeled_dir="sample", student_rounds=1, max_train_images=30)
    metrics = metrics_of(out)
    noisy = metrics["noisy_student"]
    teacher, student = noisy["rounds"]
    assert noisy["baseline_val_accuracy"] == teacher["val_accuracy"] and student["role"] == "student"
    pseudo = student["pseudo_labels"]
    assert pseudo["unlabeled"] == 300 and pseudo["known"] == 300 and 0 <= pseudo["accuracy_all"] <= 1
    assert student["train_images"] == 30 + sum(pseudo["kept_per_class"].values())
    # the saved model is the best round's: its validation accuracy is the one reported for that round
    assert metrics["val_accuracy"] == pytest.approx(noisy["best_val_accuracy"])
    assert (out / "noisy_student.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "noisy_student" / "round1" / "checkpoints").is_dir()


# ---------------------------------------------------------------- predicting with the run's model

def _folder_accuracy(csv) -> float:
    """Accuracy of a predictions CSV whose images sit in one folder per class."""
    import pandas as pd

    frame = pd.read_csv(csv)
    return float((frame.label == frame.file.map(lambda f: pathlib.Path(f).parent.name)).mean())


def test_predict_command_gives_the_run_its_accuracy(custom_run, tmp_path):
    """`python -m workbench predict` on the run's validation folder: a CSV and exactly the run's val_accuracy."""
    from workbench.data.sample import sample_dataset

    csv = tmp_path / "predictions.csv"
    proc = subprocess.run([sys.executable, "-m", "workbench", "predict", str(custom_run / "model.keras"),
                           str(sample_dataset() / "val"), "-o", str(csv), "--top-k", "2"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"Wrote 60 predictions to {csv}" in proc.stdout and "top2_probability" in proc.stdout
    assert _folder_accuracy(csv) == pytest.approx(metrics_of(custom_run)["val_accuracy"], abs=1e-9)


def test_predict_command_on_bad_input(custom_run, tmp_path, capsys):
    from workbench.__main__ import main

    assert main(["predict", str(tmp_path / "nowhere.keras"), str(tmp_path)]) == 1
    assert "error: Model '" in capsys.readouterr().err
    assert main(["predict", str(custom_run / "model.keras"), str(tmp_path)]) == 1
    assert f"error: Folder '{tmp_path}' has no image files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(custom_run / "model.keras"), str(tmp_path), "--top-k", "three"])
    assert exit_.value.code == 2 and "invalid int value: 'three'" in capsys.readouterr().err


@slow
def test_predict_recipe(custom_run, tmp_path):
    """recipes/predict.ipynb on the run's model and its validation folder plus a broken file."""
    from workbench.data.sample import sample_dataset

    images = tmp_path / "images"
    shutil.copytree(sample_dataset() / "val", images)
    (images / "brick" / "broken.jpg").write_text("not a JPEG")
    out = tmp_path / "predict"
    pm.execute_notebook(str(RECIPES / "predict.ipynb"), str(tmp_path / "executed-predict.ipynb"),
                        parameters={"model": str(custom_run / "model.keras"), "images": str(images),
                                    "output_dir": str(out)},
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    assert _folder_accuracy(out / "predictions.csv") == pytest.approx(metrics_of(custom_run)["val_accuracy"])
    assert (out / "gallery.png").read_bytes()[:4] == b"\x89PNG"
    executed = (tmp_path / "executed-predict.ipynb").read_text()
    assert "skipped" in executed and "broken.jpg" in executed and "accuracy against the folder names" in executed
