"""`load_csv`: images listed in a label file (or a pandas DataFrame), one label, several, or one 0/1 column each.

The table is read and checked whole before any image is touched: the image
and label columns (detected when unambiguous), the split column, duplicate
rows, empty or numeric-looking labels, missing files. Then every listed file is
decoded once, as `load_folder` does, and the same pipeline is built
(`folders.assemble`). Several labels per image (`label_delimiter`, or one 0/1
column per class) make the data multi-label: multi-hot float rows.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np

from workbench.data import augment as augmentation
from workbench.data.folders import IMAGE_EXTENSIONS, assemble, validate_all
from workbench.data.pipeline import ImageData, check_loader_args, decode_side

SPLITS = {"train": "train", "training": "train", "trn": "train",
          "val": "val", "valid": "val", "validation": "val", "dev": "val",
          "test": "test", "testing": "test", "holdout": "test"}
_IMAGE_NAMES = ("image", "file", "filename", "file_name", "path", "filepath", "image_path", "image_id", "img")
_MOSTLY_MISSING = 0.5  # stop, rather than skip, when more than this share of the listed files is missing


def load_csv(csv_path, images_dir=None, image_column="auto", label_column="auto", split_column=None,
             label_delimiter=None, image_size: int = 224, batch_size: int = 32, val_split: float = 0.15,
             seed: int = 0, max_train_images: int = 0, augment="auto", cache="auto",
             verbose: bool = True) -> ImageData:
    """Load the images a UTF-8 CSV file (or a pandas DataFrame) lists, with their labels, as `load_folder` does.

    images_dir: where the file names are relative to (default: the CSV's folder;
        the working directory for a DataFrame).
    image_column, label_column: "auto" detects them (the one column of image file
        names; the one other column, or several 0/1 columns: one per class,
        multi-label); a label_column list names the 0/1 columns.
    split_column: a column of train / val (valid, validation) / test values; test
        rows are left out. None: a seeded split of `val_split`; "auto": the one
        column holding only such values, if there is one.
    label_delimiter: several labels per cell (" ", "|", ...): multi-label.

    Missing files are skipped with a warning (listed in `.skipped`), unless most
    are missing; any other problem raises ValueError with one sentence.
    """
    check_loader_args(image_size, batch_size, val_split, seed, max_train_images)
    augmentation.parse(augment, "none")
    table, where, default_dir = _read(csv_path)
    root = Path(images_dir).expanduser() if images_dir is not None else default_dir
    image_col = _image_column(table, image_column, where)
    split_col = _split_column(table, split_column, where)
    label_cols = _label_columns(table, label_column, [image_col, split_col], where)
    files = table[image_col]
    _no_duplicates(files, image_col, where)
    class_names, labels = _labels(table, label_cols, label_delimiter, where)
    splits = _splits(table, split_col, where)

    fed, skipped = _check_files([str(root / f) for f in files], files, root, where, image_size)
    ok = np.array([got is not None for got in fed])

    def part(name):
        keep = ok & (splits == name) if splits is not None else ok
        return [str(fed[i]) for i in np.flatnonzero(keep)], labels[keep]

    train_paths, train_labels = part("train")
    _check_train(train_labels, class_names, where)
    val = part("val") if splits is not None else None
    if val is not None and not val[0]:
        raise ValueError(f"{where} has no readable 'val' rows in column '{split_col}': mark some rows val, or "
                         "leave split_column out for a seeded split.")
    if splits is not None and (splits == "test").any() and verbose:
        print(f"Left out {int((splits == 'test').sum())} test row(s) of column '{split_col}'.")
    return assemble(train_paths, train_labels, val, class_names, skipped, image_size=image_size,
                    batch_size=batch_size, val_split=val_split, seed=seed, max_train_images=max_train_images,
                    augment=augment, cache=cache, verbose=verbose)


def _check_files(paths, files, root, where, image_size):
    """(file to feed the pipeline or None, per row; skipped (path, reason)): missing files skipped with a
    warning (or an error when most are missing), the others decoded once as `load_folder` does."""
    exists = [Path(p).is_file() for p in paths]
    missing = [f for f, ok in zip(files, exists) if not ok]
    if len(missing) > _MOSTLY_MISSING * len(files):
        raise FileNotFoundError(f"{len(missing)} of the {len(files)} files {where} lists are not in '{root}' "
                                f"(e.g. {', '.join(missing[:3])}): pass images_dir= the folder they are in.")
    if missing:
        warnings.warn(f"Skipping {len(missing)} file(s) {where} lists that are not in '{root}': "
                      f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}.", stacklevel=3)
    checked = iter(validate_all([Path(p) for p, ok in zip(paths, exists) if ok], decode_side(image_size)))
    fed, skipped = [], []
    for path, ok in zip(paths, exists):
        usable, why = next(checked) if ok else (None, "listed in the CSV but not found")
        fed.append(usable)
        if usable is None:
            skipped.append((path, why))
    return fed, skipped


def _read(csv_path):
    """({column: stripped cells}, how messages name the table, folder file names are relative to)."""
    if hasattr(csv_path, "columns") and hasattr(csv_path, "to_numpy"):  # a pandas DataFrame
        table = {str(c).strip(): ["" if _blank(v) else str(v).strip() for v in csv_path[c].tolist()]
                 for c in csv_path.columns}
        return table, "the DataFrame", Path.cwd()
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Label file '{path}' does not exist.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"'{path}' is not UTF-8 text (byte {err.start}): save it as UTF-8 (CSV UTF-8 in "
                         "spreadsheet programs).") from None
    rows = [r for r in csv.reader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise ValueError(f"'{path}' has no rows under its header.")
    header = [c.strip() for c in rows[0]]
    ragged = [i + 1 for i, r in enumerate(rows) if len(r) != len(header)]
    if ragged:
        raise ValueError(f"Rows {', '.join(map(str, ragged[:5]))} of '{path.name}' have another number of cells "
                         f"than its header ({len(header)}: {', '.join(header)}): quote cells that hold commas.")
    return {c: [r[i].strip() for r in rows[1:]] for i, c in enumerate(header)}, f"'{path.name}'", path.parent


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # None or NaN


def _image_column(table, image_column, where) -> str:
    if image_column != "auto":
        return _column(table, image_column, where, "image_column")
    looks = [c for c, cells in table.items() if np.mean([v.lower().endswith(IMAGE_EXTENSIONS) for v in cells]) > 0.5]
    if len(looks) == 1:
        return looks[0]
    named = [c for c in table if c.lower() in _IMAGE_NAMES]
    if not looks and len(named) == 1:
        return named[0]
    raise ValueError(f"Cannot tell which column of {where} holds the image files "
                     f"({'candidates ' + ', '.join(looks or named) if looks or named else 'columns ' + ', '.join(table)}): "
                     "pass image_column=.")


def _column(table, name, where, what) -> str:
    if name not in table:
        raise ValueError(f"{what}={name!r} is not a column of {where} (columns: {', '.join(table)}).")
    return name


def _split_column(table, split_column, where) -> str | None:
    """The split column: given, or ("auto") the one column whose values are all train / val / test names."""
    if split_column != "auto":
        return None if split_column is None else _column(table, split_column, where, "split_column")
    found = [c for c, cells in table.items() if {v.lower() for v in cells} <= set(SPLITS)]
    return found[0] if len(found) == 1 else None


def _is_binary(values) -> bool:
    return set(values) <= {"0", "1", "0.0", "1.0"}


def _label_columns(table, label_column, taken, where) -> list[str]:
    """The label column, or the 0/1 columns (one per class)."""
    if isinstance(label_column, (list, tuple)):
        return [_column(table, c, where, "label_column") for c in label_column]
    if label_column != "auto":
        return [_column(table, label_column, where, "label_column")]
    rest = [c for c in table if c not in taken]
    binary = [c for c in rest if _is_binary(table[c])]
    if len(rest) == 1:
        return rest
    if len(binary) >= 2 and len(binary) == len(rest):
        return binary
    raise ValueError(f"Cannot tell which column of {where} holds the labels (columns {', '.join(rest) or 'none'} "
                     "besides the images): pass label_column= (one column, or a list of 0/1 columns).")


def _labels(table, columns, delimiter, where) -> tuple[list[str], np.ndarray]:
    """(class names, labels): class indices, or multi-hot float32 rows."""
    if len(columns) > 1:
        bad = [c for c in columns if not _is_binary(table[c])]
        if bad:
            raise ValueError(f"Label columns {', '.join(bad)} of {where} hold values other than 0 and 1: one 0/1 "
                             "column per class is expected.")
        return list(columns), np.array([[float(v) for v in table[c]] for c in columns], np.float32).T
    column = columns[0]
    cells = table[column]
    empty = np.flatnonzero(np.array(cells) == "")
    if len(empty):
        raise ValueError(f"{len(empty)} row(s) of {where} have an empty label in column '{column}' (rows "
                         f"{', '.join(str(i + 2) for i in empty[:5])} of the file): label them or remove them.")
    _not_numeric(cells, column, where)
    if not delimiter:
        class_names = sorted(set(cells))
        return class_names, np.array([class_names.index(c) for c in cells], np.int64)
    sets = [sorted({t.strip() for t in c.split(delimiter) if t.strip()}) for c in cells]
    class_names = sorted({t for s in sets for t in s})
    rows = np.zeros((len(sets), len(class_names)), np.float32)
    for i, s in enumerate(sets):
        rows[i, [class_names.index(t) for t in s]] = 1.0
    return class_names, rows


def _not_numeric(cells, column, where) -> None:
    """Refuse a label column of measurements (fractions, or nearly one distinct number per row)."""
    numbers = np.array([_number(c) for c in cells])
    if np.isnan(numbers).any():
        return
    fractional = (numbers != np.round(numbers)).any()
    if fractional or len(set(numbers)) > max(20, len(cells) // 2):
        raise ValueError(f"Label column '{column}' of {where} looks numeric (values like "
                         f"{', '.join(list(cells[:3]))}), not like class names: pass label_column= the column "
                         "of class names.")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _no_duplicates(files, column, where) -> None:
    seen, twice = set(), []
    for f in files:
        if f in seen and f not in twice:
            twice.append(f)
        seen.add(f)
    if twice:
        raise ValueError(f"{len(twice)} image(s) appear on more than one row of {where} (column '{column}': "
                         f"{', '.join(twice[:5])}): keep one row per image (several labels go in one cell with "
                         "label_delimiter=).")


def _splits(table, column, where) -> np.ndarray | None:
    if column is None:
        return None
    values = [v.lower() for v in table[column]]
    unknown = sorted(set(values) - set(SPLITS))
    if unknown:
        raise ValueError(f"Split column '{column}' of {where} has values {unknown} besides train / val / test "
                         f"(accepted: {', '.join(SPLITS)}).")
    return np.array([SPLITS[v] for v in values])


def _check_train(labels, class_names, where) -> None:
    if len(class_names) < 2:
        raise ValueError(f"{where} has {len(class_names)} class(es) ({', '.join(class_names)}): at least 2 are needed.")
    if not len(labels):
        raise ValueError(f"{where} has no readable training images.")
    counts = labels.sum(0) if labels.ndim == 2 else np.bincount(labels, minlength=len(class_names))
    absent = [c for c, n in zip(class_names, counts) if n == 0]
    if absent:
        raise ValueError(f"Class(es) {', '.join(absent)} of {where} have no readable training image: add some, "
                         "or remove their rows.")
