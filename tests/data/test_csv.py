"""wb.load_csv on real photos written to disk: single-label with a split column and missing files, multi-label
from a delimiter or 0/1 columns, and every bad input refused with one sentence before any image is read."""

import shutil

import numpy as np
import pandas as pd
import pytest

import workbench as wb


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """12 real texture photos per class in one folder (no class sub-folders): {file: class}."""
    root = tmp_path_factory.mktemp("flat")
    files = {}
    for label in ("brick", "grass", "gravel"):
        for i, src in enumerate(sorted((wb.sample_dataset() / "train" / label).glob("*.jpg"))[:12]):
            shutil.copy(src, root / f"{label}{i:02d}.jpg")
            files[f"{label}{i:02d}.jpg"] = label
    return root, files


def load(csv, **kw):
    return wb.load_csv(csv, **{"image_size": 32, "batch_size": 8, "verbose": False, **kw})


def test_single_label_csv_with_a_split_column_and_two_missing_files(flat, tmp_path):
    root, files = flat
    split = {f: ("valid" if i % 4 == 0 else "test" if i % 6 == 1 else "train") for i, f in enumerate(files)}
    rows = [f"{f},{c},{split[f]}" for f, c in files.items()] + ["gone1.jpg,brick,train", "gone2.jpg,grass,valid"]
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,species,fold\n" + "\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match=r"Skipping 2 file\(s\) 'labels.csv' lists that are not in .*gone1.jpg, gone2.jpg"):
        data = load(csv, images_dir=root, split_column="fold")
    assert data.class_names == ["brick", "grass", "gravel"] and not data.multi_label
    assert sorted(p for p, _ in data.skipped) == [str(root / "gone1.jpg"), str(root / "gone2.jpg")]
    assert {why for _, why in data.skipped} == {"listed in the CSV but not found"}
    expect = {s: {c: sum(1 for f in files if split[f] == s and files[f] == c) for c in data.class_names}
              for s in ("train", "valid")}
    assert data.train_counts == expect["train"] and data.val_counts == expect["valid"]
    assert data.num_train == sum(expect["train"].values())   # the test rows are left out
    x, y = next(iter(data.val))
    assert x.shape[1:] == (32, 32, 3) and y.dtype == "int64"
    with pytest.warns(UserWarning, match="Skipping 2 file"):
        again = load(csv, images_dir=root, split_column="auto")   # the one column of split names
    assert again.val_counts == data.val_counts


def test_multi_label_by_delimiter_and_by_01_columns(flat, tmp_path):
    root, files = flat
    names = list(files)
    sets = {f: {files[f]} | ({"rough"} if i % 3 == 0 else set()) for i, f in enumerate(names)}
    csv = tmp_path / "tags.csv"
    csv.write_text("image,tags\n" + "\n".join(f"{f},{' '.join(sorted(s))}" for f, s in sets.items()) + "\n")
    data = load(csv, images_dir=root, label_delimiter=" ", val_split=0.25)
    assert data.multi_label and data.class_names == ["brick", "grass", "gravel", "rough"]
    assert data.num_train + data.num_val == 36
    assert sum(data.train_counts.values()) + sum(data.val_counts.values()) == 36 + 12   # images per class
    rows = np.asarray(data.files["labels"])
    assert rows.shape == (data.num_train, 4) and set(np.unique(rows)) == {0.0, 1.0}
    assert data.class_weights[3] == pytest.approx((data.num_train - data.train_counts["rough"])
                                                  / data.train_counts["rough"])
    table = pd.DataFrame({"path": [str(root / f) for f in names],
                          **{c: [int(c in sets[f]) for f in names] for c in data.class_names}})
    by_columns = load(table, val_split=0.25)
    assert by_columns.multi_label and by_columns.train_counts == data.train_counts
    _, y = next(iter(by_columns.val))
    assert y.dtype == "float32" and y.shape[-1] == 4


def write(tmp_path, text, encoding="utf-8"):
    csv = tmp_path / "bad.csv"
    csv.write_bytes(text.encode(encoding))
    return csv


BAD = [
    ("file,label,note\n{a},brick,x\n{b},grass,y\n", {}, "Cannot tell which column of 'bad.csv' holds the labels "
     "(columns label, note besides the images): pass label_column="),
    ("first,second,label\n{a},{a},brick\n{b},{b},grass\n", {}, "Cannot tell which column of 'bad.csv' holds the "
     "image files (candidates first, second): pass image_column="),
    ("file,label,split\n{a},brick,train\n{b},grass,holdout2\n{c},grass,Fold-3\n", {"split_column": "split"},
     "Split column 'split' of 'bad.csv' has values ['fold-3', 'holdout2'] besides train / val / test"),
    ("file,label\n{a},brick\n{b},grass\n{a},grass\n", {}, "1 image(s) appear on more than one row of 'bad.csv' "
     "(column 'file': {a})"),
    ("file,label\n{a},brick\n{b},\n{c},grass\n", {}, "1 row(s) of 'bad.csv' have an empty label in column 'label' "
     "(rows 3 of the file)"),
    ("file,score\n{a},0.25\n{b},0.5\n{c},1.75\n", {}, "Label column 'score' of 'bad.csv' looks numeric (values like "
     "0.25, 0.5, 1.75)"),
    ("file,label\n{a},brick\nnope1.jpg,grass\nnope2.jpg,grass\n", {}, "2 of the 3 files 'bad.csv' lists are not in"),
    ("file,label\n{a},Ziegelstein\xe9\n{b},grass\n", {"encoding": "latin-1"}, "bad.csv' is not UTF-8 text (byte 34): save it as UTF-8"),
]


@pytest.mark.parametrize("text,kw,sentence", BAD, ids=["label-column", "image-column", "split-values", "duplicates",
                                                       "empty-label", "numeric", "mostly-missing", "not-utf8"])
def test_bad_tables_are_refused_with_one_sentence(flat, tmp_path, text, kw, sentence):
    root, files = flat
    a, b, c = list(files)[0], list(files)[12], list(files)[24]
    kw = dict(kw)
    csv = write(tmp_path, text.format(a=a, b=b, c=c), kw.pop("encoding", "utf-8"))
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        load(csv, images_dir=root, **kw)
    assert sentence.format(a=a) in str(err.value)
    assert len(str(err.value).rstrip(".").split(". ")) <= 2   # one sentence (and its advice after a colon)


def test_numbered_classes_are_names_not_measurements(flat, tmp_path):
    root, files = flat
    ids = {"brick": 0, "grass": 1, "gravel": 2}
    csv = write(tmp_path, "file,label\n" + "".join(f"{f},{ids[c]}\n" for f, c in files.items()))
    data = load(csv, images_dir=root)
    assert data.class_names == ["0", "1", "2"] and data.train_counts["2"] + data.val_counts["2"] == 12
