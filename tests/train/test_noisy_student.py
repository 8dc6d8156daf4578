"""Noisy-student training: pseudo-label selection, feature reuse, bad input, and a real run on the sample."""
import dataclasses
import functools
import json

import numpy as np
import pytest
from conftest import slow

import workbench as wb
from workbench.data.folders import with_extra_images
from workbench.train.pseudo_labels import Predictor, select
from workbench.data.sample import sample_truth

SIZE = 32


def test_select_thresholds_then_balances_by_duplicating_or_trimming():
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.7, 0.3, 0.0], [0.6, 0.4, 0.0],  # class 0: four
                      [0.1, 0.55, 0.35],                                                  # class 1: one
                      [0.4, 0.35, 0.25],                                                  # below threshold
                      [0.0, 0.0, 1.0], [0.1, 0.0, 0.9]])                                  # class 2: two
    assert list(select(probs, 0.5, balance=False)) == [0, 1, 2, 3, 4, 6, 7]
    kept = select(probs, 0.5, balance=True)   # mean of 4, 1, 2 = 2.33 -> 2 per class
    assert list(kept) == [0, 1, 4, 4, 6, 7]   # the two most confident of class 0; class 1 repeated
    assert len(select(probs, 0.99, balance=True)) == 1 and len(select(probs * 0.4, 0.5, balance=True)) == 0


@pytest.fixture(scope="module")
def few_labels():
    return wb.load_folder(wb.sample_dataset(), image_size=SIZE, batch_size=16, seed=0, max_train_images=24,
                          verbose=False)


def tiny(num_classes=3, width=24, **noise):
    model = wb.regnet(wb.RegNetConfig(w0=width, wa=24.0, wm=2.0, depth=6, group_width=8, se_ratio=0.25,
                                      name=f"tiny{width}"),
                      num_classes=num_classes, input_shape=(SIZE, SIZE, 3), seed=0, **noise)
    return model


def test_predictions_reuse_backbone_features_when_the_backbone_is_the_same(few_labels):
    first, second = tiny(), tiny()
    second.get_layer("head_fc").set_weights([w * 2 for w in second.get_layer("head_fc").get_weights()])
    predict = Predictor()
    for model in (first, second):
        probs = predict(model, few_labels.val, "val", tta=False, flip=False)
        direct = np.concatenate([model.predict_on_batch(x) for x, _ in few_labels.val])
        np.testing.assert_allclose(probs, direct, atol=1e-5)
    assert len(predict.features) == 1          # one backbone, computed once, two heads
    third = tiny(width=16)                     # another backbone: computed anew
    predict(third, few_labels.val, "val", tta=True, flip=True)
    views = [f for key, f in predict.features.items() if key[2]]   # (views, images, features) with tta
    assert len(predict.features) == 2 and views[0].shape[:2] == (10, 60)


def test_soft_pseudo_labels_reach_training_and_mixup(few_labels, tmp_path):
    files = sorted(wb.sample_unlabeled(per_class=4).glob("*.jpg"))[:6]
    rows = np.full((6, 3), 0.2, np.float32)
    rows[:, 1] = 0.6
    data = with_extra_images(few_labels, [str(f) for f in files], rows, augment="crop,mixup")
    assert data.num_train == 24 + 6 and data.train_counts["grass"] == 8 + 6
    labels = np.concatenate([y for _, y in data.train_plain])
    assert labels.shape == (30, 3) and np.isclose(labels.sum(), 30) and (labels == 0.6).sum() == 6
    x, y = next(iter(data.training(0)))
    assert x.shape == (16, SIZE, SIZE, 3) and y.shape == (16, 3) and np.allclose(y.numpy().sum(-1), 1, atol=1e-5)


def test_missing_or_empty_unlabeled_folder_is_a_clear_error(few_labels, tmp_path):
    with pytest.raises(FileNotFoundError, match="Unlabelled-image folder .* does not exist"):
        wb.noisy_student(few_labels, tmp_path / "nope", tiny, epochs=1, verbose=0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="has no image files"):
        wb.noisy_student(few_labels, tmp_path / "empty", tiny, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="labels must be one of"):
        wb.noisy_student(few_labels, tmp_path / "empty", tiny, labels="fuzzy", verbose=0)
    tfds_like = dataclasses.replace(few_labels, files=None)
    with pytest.raises(ValueError, match="needs labelled data from wb.load_folder"):
        wb.noisy_student(tfds_like, tmp_path / "empty", tiny, verbose=0)


def test_unreadable_unlabeled_images_leave_ordinary_finetuning(few_labels, tmp_path, capsys):
    bad = tmp_path / "unsorted"
    bad.mkdir()
    for i in range(3):
        (bad / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = wb.noisy_student(few_labels, bad, tiny, epochs=1, verbose=1, lr=2e-3, pretrained=False)
    said = capsys.readouterr().out
    assert "Skipped 3 unreadable unlabelled file(s)" in said and "ordinary fine-tuning" in said
    assert len(result.rounds) == 1 and result.best_round == 0 and len(result.skipped) == 3
    assert result.model is result.finetune.model and result.rounds[0]["role"] == "teacher"


@slow
def test_noisy_student_on_the_sample(few_labels, tmp_path):
    """A teacher, then a (smaller, so warned) student on 24 labels + 60 unlabelled photos; real numbers."""
    unlabeled = wb.sample_unlabeled(per_class=20)
    truth = sample_truth(unlabeled)
    def run():
        return wb.noisy_student(few_labels, unlabeled, tiny, functools.partial(tiny, width=16), rounds=1,
                                epochs=2, truth=truth, threshold=0.34, lr=2e-3, pretrained=False, verbose=0,
                                output_dir=tmp_path / "ns")
    result = run()
    teacher, student = result.rounds
    assert teacher["role"] == "teacher" and student["role"] == "student"
    assert any("smaller than the teacher" in w for w in result.warnings)
    pseudo = student["pseudo_labels"]
    counts = [n for n in pseudo["kept_per_class"].values() if n]
    assert max(counts) - min(counts) == 0              # balanced
    assert student["train_images"] == 24 + sum(counts) and pseudo["known"] == 60
    # the reported pseudo-label accuracy is the teacher's argmax against the truth file
    assert 0 <= pseudo["accuracy_all"] <= 1 and pseudo["unlabeled"] == 60
    assert (tmp_path / "ns" / "round0" / "checkpoints").is_dir() and (tmp_path / "ns" / "round1").is_dir()
    best = max(teacher["val_accuracy"], student["val_accuracy"])
    assert result.metrics()["best_val_accuracy"] == best and result.baseline == teacher["val_accuracy"]
    # the returned model is the best round's: its validation accuracy is what was reported
    y = np.concatenate([y for _, y in few_labels.val])
    pred = np.concatenate([result.model.predict_on_batch(x) for x, _ in few_labels.val]).argmax(-1)
    assert np.mean(pred == y) == pytest.approx(best)
    result.plot(tmp_path / "ns.png")
    assert (tmp_path / "ns.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(result.metrics())                       # what metrics.json records is JSON
    again = run()                                      # every round resumes at its end: the same numbers
    assert [r["val_accuracy"] for r in again.rounds] == [r["val_accuracy"] for r in result.rounds]
    assert again.rounds[1]["pseudo_labels"] == pseudo and again.rounds[1]["minutes"] < student["minutes"]


def test_truth_must_name_known_classes(few_labels):
    with pytest.raises(ValueError, match="is not one of the classes"):
        wb.noisy_student(few_labels, wb.sample_unlabeled(per_class=20), tiny, epochs=1, verbose=0,
                         truth={"photo_0000.jpg": "marble"}, pretrained=False)
