"""Reports of a run on a tiny RegNet and a tiny image folder: metrics, pictures, metrics.json."""

import json

import keras
import matplotlib.figure
import numpy as np
import pytest
from conftest import tiny_regnet, write_classes
from PIL import Image

from workbench.data.folders import load_folder
from workbench.report.reports import (confusion_matrix, per_class_metrics, plot_confusion_matrix,
                               plot_lr_schedule, plot_top_losses, plot_training_curves,
                               predict_dataset, write_report)
from workbench.train.discriminative import DiscriminativeOptimizer
from workbench.train.lr_schedules import WarmupCosine


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_regnet()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = write_classes(tmp_path_factory.mktemp("reports") / "photos", {"ant": 8, "bee": 8, "cat": 8})
    return load_folder(root, image_size=32, batch_size=8, val_split=0.5, seed=0, augment=False)


class FakeResult:
    """Duck-typed FinetuneResult."""

    history = {"loss": [1.2, 0.9, 0.7], "accuracy": [0.4, 0.6, 0.7], "val_loss": [1.1, 1.0, 1.05],
               "val_accuracy": [0.33, 0.5, 0.42], "lr": [1e-3, 5e-4, np.float32(1e-4)]}
    events = [{"epoch": 0, "stages": ["head"]}, {"epoch": 2, "stages": ["stage4", "stage3"]}]
    epochs_run = 3
    best_epoch = 1
    best_val_accuracy = np.float64(0.5)
    feature_cache_speedup = None


def test_confusion_matrix_counts():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 0, 2]
    expected = [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 3), expected)
    probs = np.eye(3)[y_pred] * 0.8 + 0.1  # probabilities give the same matrix
    np.testing.assert_array_equal(confusion_matrix(y_true, probs, 3), expected)
    fig = plot_confusion_matrix(y_true, y_pred, ["a", "b", "c"])
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"2\n67%", "1\n33%", "3\n75%", "0\n0%"} <= texts


def test_per_class_metrics_by_hand():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 0, 2]
    m = per_class_metrics(y_true, y_pred, ["a", "b", "c"])
    # a: tp 2, predicted 3, support 3; b: tp 1, predicted 2, support 2; c: tp 3, predicted 4, support 4
    assert m["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["c"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    never = per_class_metrics([0, 0], [0, 0], ["a", "b"])["b"]  # no support, never predicted
    assert never == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    m = per_class_metrics([0, 1, 1, 1], [1, 1, 1, 1], ["a", "b"])
    assert m["b"]["precision"] == 0.75 and m["b"]["recall"] == 1.0
    assert m["b"]["f1"] == pytest.approx(2 * 0.75 / 1.75)


def test_write_report(tiny_model, tiny_data, tmp_path):
    metrics = write_report(tiny_model, tiny_data, FakeResult(), tmp_path / "run", "tiny",
                           extra={"lr": 1e-3, "seed": np.int64(0)})
    out = tmp_path / "run"
    for name in ("training_curves.png", "confusion_matrix.png", "top_losses.png", "lr_schedule.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    for key in ("val_accuracy", "val_loss", "history", "class_names", "variant", "epochs_run", "per_class",
                "events", "best_epoch", "num_train", "num_val", "lr", "seed"):
        assert key in saved, key
    assert saved["class_names"] == ["ant", "bee", "cat"] and saved["variant"] == "tiny"
    assert saved["epochs_run"] == 3 and saved["events"][1]["stages"] == ["stage4", "stage3"]
    assert saved["num_val"] == tiny_data.num_val and saved["num_train"] == tiny_data.num_train
    assert sum(c["support"] for c in saved["per_class"].values()) == tiny_data.num_val

    # the numbers agree with Keras' own metrics on the same predictions
    y_true, y_prob = predict_dataset(tiny_model, tiny_data.val)
    keras_loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(y_true, y_prob)))
    assert saved["val_loss"] == pytest.approx(keras_loss, rel=1e-4)
    assert saved["val_accuracy"] == pytest.approx(np.mean(y_prob.argmax(1) == y_true))
    assert np.array(saved["confusion_matrix"]).sum() == tiny_data.num_val


def test_plots_return_figures(tiny_model, tiny_data, tmp_path):
    history = dict(FakeResult.history)
    figs = [
        plot_training_curves(history, events=FakeResult.events, path=tmp_path / "curves.png"),
        plot_training_curves({"loss": [1.0, 0.5]}),  # no accuracy, no validation
        plot_top_losses(tiny_model, tiny_data, n=4, path=tmp_path / "top.png"),
        plot_lr_schedule(WarmupCosine(1e-3, 200, 20), path=tmp_path / "sched.png"),
        plot_lr_schedule([1e-3, 1e-3, 1e-4], xlabel="epoch"),
        plot_lr_schedule(DiscriminativeOptimizer(keras.optimizers.AdamW(WarmupCosine(1e-3, 50)),
                                                 tiny_model)),
    ]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    assert len([ax for ax in figs[2].axes if ax.get_title()]) == 4
    assert (tmp_path / "top.png").stat().st_size > 1000
