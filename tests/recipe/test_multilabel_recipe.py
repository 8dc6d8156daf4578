"""The custom recipe on a multi-label CSV, end to end under papermill: mosaics of real texture photos whose label
sets are known, trained, reported, exported; the exports predict the Keras model's label sets, and the thresholds
chosen on validation beat 0.5 on held-out images."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import slow

import workbench as wb
from workbench.data.sample import sample_multilabel
from workbench.deploy.tflite import tflite_predict
from workbench.train.multilabel import f1_scores, predict_sets

pm = pytest.importorskip("papermill")
RECIPE = __import__("pathlib").Path(__file__).parents[2] / "recipes" / "custom.ipynb"


def test_label_parameters_are_checked():
    from workbench import recipe
    base = dict(variant="200mf", weights="none", image_size=32, batch_size=8, epochs=1, unfreeze="auto", lr=1e-3,
                lr_decay="auto", seed=0, max_train_images=0, output_dir="out", export="")
    with pytest.raises(recipe.RecipeError, match="label_delimiter='|' splits the label cells of a CSV: set labels="):
        recipe.check_params(**base, label_delimiter="|")
    with pytest.raises(recipe.RecipeError, match="labels='no/such.csv' is not a file"):
        recipe.check_params(**base, labels="no/such.csv")
    root = sample_multilabel()
    with pytest.raises(recipe.RecipeError, match="labels= needs data_dir= the folder that holds the images"):
        recipe.check_params(**base, labels=str(root / "labels.csv"))
    with pytest.raises(recipe.RecipeError, match="label_delimiter makes the data multi-label: use one of them"):
        recipe.check_params(**base, labels=str(root / "labels.csv"), data_dir=str(root / "images"),
                            label_delimiter="|", unlabeled_dir=str(root))
    p = recipe.check_params(**base, labels=str(root / "labels.csv"), data_dir=str(root / "images"), label_delimiter="|")
    assert (p.labels, p.label_delimiter) == (str(root / "labels.csv"), "|")


def _images(root, split, size):
    rows = [r.split(",") for r in (root / "labels.csv").read_text().splitlines()[1:] if r.endswith("," + split)]
    names = ["brick", "grass", "gravel"]
    images = np.stack([tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(str(root / "images" / r[0])), 3),
                                       (size, size)).numpy() for r in rows])
    truth = np.array([[n in r[1].split("|") for n in names] for r in rows], "int64")
    return images, truth, [root / "images" / r[0] for r in rows]


@slow
def test_multi_label_recipe_end_to_end(tmp_path):
    root = sample_multilabel(test=60)
    out = tmp_path / "out"
    pm.execute_notebook(str(RECIPE), str(tmp_path / "executed.ipynb"), kernel_name="python3", cwd=str(tmp_path),
                        progress_bar=False, parameters=dict(
                            data_dir=str(root / "images"), labels=str(root / "labels.csv"), label_delimiter="|",
                            variant="200mf", weights="none", image_size=32, batch_size=16, epochs=6, lr=0.004,
                            output_dir=str(out), export="keras,saved_model,tflite"))
    metrics = json.loads((out / "metrics.json").read_text())
    names = ["brick", "grass", "gravel"]
    assert metrics["task"] == "multi_label" and list(metrics["thresholds"]) == names
    assert metrics["num_train"] == 120 and metrics["num_val"] == 60   # the test rows are left out
    assert metrics["class_counts"]["val"] == {n: m["support"] for n, m in metrics["per_class"].items()}
    assert len(metrics["history"]["val_map"]) == 6 and metrics["best_val_accuracy"] == max(metrics["history"]["val_map"])
    executed = (tmp_path / "executed.ipynb").read_text()
    assert "mAP " in executed and "sigmoid (multi-label) head" in executed
    thresholds = np.array([metrics["thresholds"][n] for n in names])
    for labels in ("export/model_labels.txt", "export/saved_model/assets/labels.txt", "export/tflite/labels.txt"):
        written = json.loads((out / labels).with_name(labels.split("/")[-1].replace("labels.txt",
                                                                                     "thresholds.json")).read_text())
        assert written == metrics["thresholds"]

    images, truth, files = _images(root, "test", 32)
    model = keras.models.load_model(out / "model.keras")
    ours = model.predict(images, verbose=0)
    sets = predict_sets(ours, thresholds)
    exported = {"keras": keras.models.load_model(out / "export/model.keras").predict(images, verbose=0),
                "saved_model": tf.saved_model.load(str(out / "export/saved_model")).signatures["serving_default"](
                    images=tf.constant(images))["probabilities"].numpy(),
                "tflite": tflite_predict(out / "export/tflite/model_float32.tflite", images)}
    for fmt, scores in exported.items():
        assert (predict_sets(scores, thresholds) == sets).all(), fmt
    dynamic = predict_sets(tflite_predict(out / "export/tflite/model_dynamic_range.tflite", images), thresholds)
    assert (dynamic == sets).all(1).mean() >= 0.9

    chosen, half = f1_scores(truth, sets)["macro_f1"], f1_scores(truth, predict_sets(ours, 0.5))["macro_f1"]
    assert chosen > half, (chosen, half)   # on held-out mosaics, gravel rare

    # wb.predict reads the run's thresholds beside each model and gives the same label sets.
    predicted = {path: wb.predict(out / path, files) for path in
                 ("model.keras", "export/saved_model", "export/tflite/model_float32.tflite")}
    for path, preds in predicted.items():
        assert preds.thresholds == metrics["thresholds"] and preds.label_sets == predicted["model.keras"].label_sets
    _, val_truth, val_files = _images(root, "val", 32)
    val_sets = wb.predict(out / "model.keras", val_files).label_sets
    exact = np.mean([s == [n for n, on in zip(names, row) if on] for s, row in zip(val_sets, val_truth)])
    assert exact == pytest.approx(metrics["val_accuracy"])  # the run's own figure (every label right)
