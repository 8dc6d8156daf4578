"""The recipes' parameters, checked once before any work and handed on as values (`RecipeParams`).

Parameters are checked with the library's own rules (`workbench.utils.checks` and each component's
parser), so a recipe and the Python API accept and refuse the same values; a bad one raises
`RecipeError` with one sentence.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.data import augment as augmentation
from workbench.deploy.export import parse_formats
from workbench.models import published
from workbench.models.design import get_config, resolve_variant
from workbench.models.published import WeightInfo
from workbench.models.tfhub import is_hub_variant
from workbench.train.distribute import STRATEGIES
from workbench.train.precision import PRECISIONS
from workbench.train.schedule import Schedule
from workbench.utils import checks


class RecipeError(ValueError):
    """A recipe parameter is wrong; the message says which and what is expected."""


@dataclass(frozen=True)
class Weights:
    """A recipe's weights: none, a file, or a tag / Hub id resolved once to its published row (`info`)."""

    spec: str | None = None
    info: WeightInfo | None = None

    @classmethod
    def of(cls, variant: str, value) -> Weights:
        """`value` (None, "none", a file, a tag or a Hub id) checked for `variant`; a Weights as it is."""
        if isinstance(value, Weights):
            return value
        spec = None if value in (None, "", "none", "None") else str(value)
        if spec is None or is_hub_variant(variant) or Path(spec).is_file():
            return cls(spec)
        if not published.is_name(spec):
            raise ValueError(f"weights={spec!r}: no such file; use a tag ('imagenet', 'pycls', 'keras', "
                             f"...), a Hub id, 'none' or the path of a weights file.")
        return cls(spec, published.resolve(get_config(variant), spec))

    def __str__(self):
        return str(self.spec)


@dataclass(frozen=True)
class RecipeParams:
    """Every recipe parameter, checked: variants canonical, weights resolved, the schedule parsed
    (None: "auto"), export formats listed, output_dir a Path."""

    variant: str
    weights: Weights
    image_size: int | str
    batch_size: int
    epochs: int
    unfreeze: Schedule | None
    lr: float
    lr_decay: float | str
    seed: int
    max_train_images: int
    output_dir: Path
    export: list
    augment: object = "auto"
    ema: bool = False
    tta: bool = False
    drop_path: float = 0.0
    progressive: bool = False
    precision: str = "auto"
    strategy: str = "auto"
    data_dir: str | None = None
    dataset: str | None = None
    unlabeled_dir: str = ""
    student_variant: str = ""
    student_weights: Weights = Weights()
    student_rounds: int = 1
    budget_minutes: float = 0
    labels: str = ""           # a CSV of labels (data_dir then holds the images); empty: class sub-folders
    label_delimiter: str = ""  # several labels per cell (multi-label); empty: one label per image

    def __str__(self):
        student = f", student {self.student_variant}" if self.unlabeled_dir else ""
        return (f"variant {self.variant}, weights {self.weights}, image_size {self.image_size}, epochs {self.epochs}, "
                f"unfreeze {self.unfreeze or 'auto'}, lr {self.lr:g}, lr_decay {self.lr_decay}, "
                f"export {self.export or 'none'}, output_dir {self.output_dir}{student}")


def check_params(*, variant, weights, image_size, batch_size, epochs, unfreeze, lr, lr_decay,
                 seed, max_train_images, output_dir, export, data_dir=None, dataset=None, augment="auto",
                 ema=False, tta=False, drop_path=0.0, progressive=False, precision="auto",
                 strategy="auto", unlabeled_dir="", student_variant="", student_rounds=1,
                 budget_minutes=0, labels="", label_delimiter="") -> RecipeParams:
    """Validate every recipe parameter before any work; raise RecipeError with one sentence."""
    try:
        run = _check_run(budget_minutes=budget_minutes, student_rounds=student_rounds, precision=precision,
                         strategy=strategy, image_size=image_size, batch_size=batch_size, epochs=epochs, lr=lr,
                         lr_decay=lr_decay, augment=augment, ema=ema, tta=tta, progressive=progressive,
                         drop_path=drop_path, max_train_images=max_train_images, seed=seed)
        student_variant = _variant(student_variant) if student_variant else ""
        variant = _variant(variant)
        schedule = parse_unfreeze(unfreeze)
        try:
            formats = parse_formats(export or "")
        except ValueError as e:
            raise ValueError(f"export={export!r}: {e}") from None
    except ValueError as e:
        raise RecipeError(str(e)) from None
    _check_labels(labels, label_delimiter, data_dir, dataset, unlabeled_dir)
    _check_places(data_dir, dataset, unlabeled_dir, output_dir)
    chosen, student = _check_weights(variant, weights, budget_minutes, unlabeled_dir, student_variant or variant)
    return RecipeParams(variant=variant, weights=chosen, unfreeze=schedule, output_dir=Path(output_dir),
                        export=formats, data_dir=data_dir, dataset=dataset, unlabeled_dir=unlabeled_dir,
                        student_variant=student_variant or variant, student_weights=student,
                        labels=labels or "", label_delimiter=label_delimiter or "", **run)


def _variant(name) -> str:
    return name if is_hub_variant(name) else resolve_variant(name)


def parse_unfreeze(unfreeze) -> Schedule | None:
    """The `unfreeze` parameter as a Schedule, or None for "auto"."""
    if unfreeze in ("auto", "", None):
        return None
    try:
        return Schedule.parse(unfreeze)
    except ValueError as e:
        raise ValueError(f"unfreeze={unfreeze!r} is not a schedule: {e}") from None


def _check_run(*, budget_minutes, student_rounds, precision, strategy, image_size, batch_size, epochs, lr,
               lr_decay, augment, ema, tta, progressive, drop_path, max_train_images, seed) -> dict:
    """The numbers and names of the run, checked (ValueError on the first wrong one)."""
    if budget_minutes != 0:
        checks.positive_number("budget_minutes", budget_minutes, " (0 = off, else the minutes to plan for)")
    for name, value in (("ema", ema), ("tta", tta), ("progressive", progressive)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}.")
    augmentation.parse(augment, "none")
    return dict(
        budget_minutes=budget_minutes,
        student_rounds=checks.positive_int("student_rounds", student_rounds, " (rounds of noisy-student training)"),
        precision=checks.one_of("precision", precision, PRECISIONS),
        strategy=checks.one_of("strategy", strategy, STRATEGIES),
        image_size=image_size if image_size == "auto" else checks.image_size(image_size),
        batch_size=checks.positive_int("batch_size", batch_size),
        epochs=checks.positive_int("epochs", epochs, " (the number of passes over the data)"),
        lr=checks.positive_number("lr", lr, " (the head's peak learning rate, e.g. 1e-3)"),
        lr_decay=lr_decay if lr_decay == "auto" else checks.lr_decay(lr_decay),
        augment=augment, ema=ema, tta=tta, progressive=progressive,
        drop_path=checks.fraction("drop_path", drop_path, " (stochastic depth rate of the last block, e.g. 0.05)"),
        max_train_images=checks.non_negative_int("max_train_images", max_train_images, " (0 = all)"),
        seed=checks.integer("seed", seed))


def _check_places(data_dir, dataset, unlabeled_dir, output_dir) -> None:
    """The folders and the dataset name: RecipeError when one is missing or mistaken."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise RecipeError(f"data_dir={str(data_dir)!r} does not exist: point it at a folder with one "
                          f"sub-folder of images per class (with labels=, the folder of the images).")
    if unlabeled_dir == "sample" and data_dir is not None:
        raise RecipeError("unlabeled_dir='sample' is the sample dataset's unlabelled photos: use it with the "
                          "sample dataset (data_dir=''), or point unlabeled_dir at your own unlabelled images.")
    if unlabeled_dir and unlabeled_dir != "sample" and not Path(unlabeled_dir).is_dir():
        raise RecipeError(f"unlabeled_dir={str(unlabeled_dir)!r} does not exist: point it at a folder of "
                          f"unlabelled images, or leave it empty for ordinary fine-tuning.")
    if not str(output_dir):
        raise RecipeError("output_dir must name a folder for the results.")
    if dataset is not None and not (isinstance(dataset, str) and dataset):
        raise RecipeError(f"dataset must be the name of a TFDS image-classification dataset, got {dataset!r}.")


def _check_labels(labels, label_delimiter, data_dir, dataset, unlabeled_dir) -> None:
    """A label file and its delimiter: RecipeError when they contradict the other data settings."""
    if label_delimiter and not labels:
        raise RecipeError(f"label_delimiter={label_delimiter!r} splits the label cells of a CSV: set labels= "
                          "the CSV file too, or leave label_delimiter empty.")
    if not labels:
        return
    if not Path(labels).is_file():
        raise RecipeError(f"labels={str(labels)!r} is not a file: point it at a CSV of image files and labels.")
    if dataset is not None:
        raise RecipeError("labels= reads a CSV of your images; dataset= reads a TFDS dataset: set one of them.")
    if not data_dir:
        raise RecipeError("labels= needs data_dir= the folder that holds the images its rows name.")
    if unlabeled_dir and label_delimiter:
        raise RecipeError("unlabeled_dir (noisy-student training) pseudo-labels one class per image; "
                          "label_delimiter makes the data multi-label: use one of them.")


def _check_weights(variant, weights, budget_minutes, unlabeled_dir, student_variant) -> tuple[Weights, Weights]:
    """(the model's weights, the noisy student's) resolved once; RecipeError when they cannot be."""
    spec = None if weights in (None, "", "none", "None") else weights
    if budget_minutes and (is_hub_variant(variant) or (spec is not None and Path(spec).is_file())
                           or unlabeled_dir):
        raise RecipeError("budget_minutes plans the variant, its weights tag, the image size and the epochs: use "
                          "it with a weights tag (imagenet, pycls, ...) or none, not with a weights file, a Hub "
                          "variant or unlabeled_dir; or set budget_minutes=0.")
    try:
        chosen = Weights.of(variant, spec)
        same = student_variant == variant or not unlabeled_dir
        return chosen, chosen if same else Weights.of(student_variant, spec)
    except ValueError as e:
        raise RecipeError(str(e)) from None
