"""Multi-label end to end on composites of real texture photos (the label set of each image is exactly the
textures pasted into it): the exact metrics against scikit-learn, training, thresholds, report, refusals."""

import json

import keras
import numpy as np
import pytest
from conftest import slow, tiny_regnet
from sklearn.metrics import average_precision_score, f1_score

import workbench as wb
from workbench.data.sample import sample_multilabel
from workbench.train import multilabel
from workbench.report.classes import unreliable
from workbench.report.multilabel import scores_of


@pytest.fixture(scope="module")
def composites():
    """The multi-label sample at 32 px: 120 train / 60 val mosaics, gravel in about a fifth of them."""
    root = sample_multilabel()
    return wb.load_csv(root / "labels.csv", images_dir=root / "images", split_column="split", label_delimiter="|",
                       image_size=32, batch_size=16, verbose=False)


@pytest.fixture(scope="module")
def trained(composites, tmp_path_factory):
    out = tmp_path_factory.mktemp("multilabel")
    model = tiny_regnet(3, 32, classifier_activation="sigmoid")
    result = wb.finetune(model, composites, epochs=3, lr=5e-3, class_weight="balanced", verbose=0)
    metrics = wb.write_report(result.model, composites, result, out, "tiny")
    return result, metrics, out


def test_composite_labels_are_the_textures_pasted(composites):
    root = sample_multilabel()
    rows = [line.split(",") for line in (root / "labels.csv").read_text().splitlines()[1:]]
    assert composites.class_names == ["brick", "grass", "gravel"] and composites.multi_label
    assert composites.num_train == 120 and composites.num_val == 60
    for name in composites.class_names:   # the counts are of the images holding each texture
        assert composites.train_counts[name] == sum(name in r[1].split("|") for r in rows if r[2] == "train")
    assert composites.train_counts["gravel"] < composites.train_counts["brick"] / 2   # gravel is rare


def test_exact_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = (rng.random((80, 4)) < [0.5, 0.3, 0.1, 0.05]).astype(int)
    y[0, 3] = 1
    scores = np.clip(y * 0.3 + rng.random((80, 4)) * 0.7, 0, 1).round(2)   # ties included
    assert multilabel.average_precision(y, scores) == pytest.approx(
        [average_precision_score(y[:, c], scores[:, c]) for c in range(4)])
    predicted = multilabel.predict_sets(scores, [0.5] * 4)
    f1 = multilabel.f1_scores(y, predicted)
    assert f1["micro_f1"] == pytest.approx(f1_score(y, predicted, average="micro"))
    assert f1["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro", zero_division=0))
    thresholds = multilabel.choose_thresholds(y, scores)
    best = [max(f1_score(y[:, c], scores[:, c] >= t, zero_division=0) for t in np.unique(scores[:, c]))
            for c in range(4)]   # the best F1 any cut of the scores reaches
    assert multilabel.f1_scores(y, multilabel.predict_sets(scores, thresholds))["per_class"] == pytest.approx(best)


def test_weighted_binary_crossentropy_weighs_each_class_positives():
    y = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    p = np.array([[0.8, 0.3], [0.4, 0.6]], "float32")
    loss = multilabel.WeightedBinaryCrossentropy([3.0, 0.5], label_smoothing=0.2)
    t = y * 0.8 + 0.1
    terms = -(np.array([3.0, 0.5]) * t * np.log(p) + (1 - t) * np.log(1 - p))
    assert float(loss(y, p)) == pytest.approx(terms.mean(), rel=1e-5)
    logits = multilabel.WeightedBinaryCrossentropy([3.0, 0.5], label_smoothing=0.2, from_logits=True)
    assert float(logits(y, np.log(p / (1 - p)))) == pytest.approx(terms.mean(), rel=1e-4)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert again.pos_weight == [3.0, 0.5] and again.label_smoothing == pytest.approx(0.2)


def test_finetune_monitors_map_and_the_report_is_multi_label(trained, composites):
    result, metrics, out = trained
    assert result.monitor == "val_map" and len(result.history["val_map"]) == 3
    assert result.best_val_accuracy == max(result.history["val_map"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["task"] == "multi_label" and list(saved["thresholds"]) == composites.class_names
    assert all(0 < t < 1 for t in saved["thresholds"].values())
    per_class = saved["per_class"]
    assert saved["map"] == pytest.approx(np.mean([per_class[c]["ap"] for c in composites.class_names]))
    assert saved["macro_f1"] >= saved["macro_f1_at_0.5"]   # the thresholds maximize each class's F1 here
    assert saved["class_counts"] == {"train": composites.train_counts, "val": composites.val_counts}
    assert {c: m["support"] for c, m in per_class.items()} == composites.val_counts
    assert "per_class_ap.png" in saved["files"] and "confusion_matrix.png" not in saved["files"]
    for png in ("per_class_ap.png", "top_losses.png", "training_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    titles = [ax.get_title() for ax in wb.plot_top_losses(result.model, composites, n=4).axes if ax.get_title()]
    assert len(titles) == 4 and all(t.startswith("missed: ") and "\nadded: " in t for t in titles)


def test_rare_classes_get_a_sentence():
    notes = unreliable({"cat": 40, "lynx": 3, "ocelot": 1})
    assert notes == ["Class 'lynx' has only 3 validation images: its precision, recall, F1 and AP are not "
                     "reliable (collect at least 5).",
                     "Class 'ocelot' has only 1 validation image: its precision, recall, F1 and AP are not "
                     "reliable (collect at least 5)."]


def test_what_multi_label_data_refuses(composites):
    with pytest.raises(ValueError, match="ends in a softmax, which makes its classes compete"):
        wb.finetune(tiny_regnet(3, 32), composites, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="tta=True reports single-label accuracy"):
        wb.finetune(tiny_regnet(3, 32, classifier_activation="sigmoid"), composites, epochs=1, tta=True, verbose=0)
    with pytest.raises(ValueError, match="noisy_student pseudo-labels each unlabelled image with one class"):
        wb.noisy_student(composites, "never/read", lambda: None, epochs=1)


@slow
def test_staged_epochs_on_cached_features_and_a_logits_head(composites, tmp_path):
    """The head alone on cached backbone features, then every stage, with mixup of multi-hot rows; a logits head
    is scored through a sigmoid."""
    model = tiny_regnet(3, 32, classifier_activation=None)
    result = wb.finetune(model, composites, epochs=3, unfreeze="0:head,2:all", lr=5e-3, augment="flip,mixup",
                         verbose=0)
    assert result.feature_cache_speedup is not None and len(result.history["val_map"]) == 3
    metrics = wb.write_report(result.model, composites, result, tmp_path, "tiny")
    y, p, _ = scores_of(result.model, composites.val)
    assert ((p > 0) & (p < 1)).all() and metrics["map"] == pytest.approx(np.nanmean(multilabel.average_precision(y, p)))
