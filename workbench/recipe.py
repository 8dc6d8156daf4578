"""What the recipe notebooks call: parameter checks, model choice, outputs, summary.

Recipes (`recipes/*.ipynb`) keep narrative and parameters; the logic that
would make a cell longer than a dozen lines lives here. Parameters are checked
with the library's own rules (`workbench.utils.checks` and each component's parser),
so a recipe and the Python API accept and refuse the same values.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from workbench.data import augment as augmentation
from workbench.utils import checks
from workbench.models import published as pretrained
from workbench.models.design import complexity, get_config, resolve_variant
from workbench.train.distribute import STRATEGIES, is_chief
from workbench.deploy.export import export_all, parse_formats
from workbench.models.tfhub import hub_classifier, hub_handle, is_hub_variant
from workbench.models.regnet import regnet
from workbench.train.precision import PRECISIONS
from workbench.models.published import WeightsUnavailableError
from workbench.report.reports import write_report
from workbench.train.unfreeze import parse_schedule
from workbench.models.convert import fetch_weights

# Multiply-adds (GF) per training image a recipe accepts when it picks a larger image size by itself
# (image_size="auto"): on a CPU, RegNetY-200MF at 224 px (0.2 GF) trains at ~28 img/s on 2 cores, so
# 1 GF keeps an epoch of a thousand images within minutes; a GPU or TPU affords 384 px on the big models.
TRAIN_BUDGET_GF = {"cpu": 1.0, "accelerator": 100.0}


class RecipeError(ValueError):
    """A recipe parameter is wrong; the message says which and what is expected."""


def check_params(*, variant, weights, image_size, batch_size, epochs, unfreeze, lr, lr_decay,
                 seed, max_train_images, output_dir, export, data_dir=None, dataset=None, augment="auto",
                 ema=False, tta=False, drop_path=0.0, progressive=False, precision="auto",
                 strategy="auto", unlabeled_dir="", student_variant="", student_rounds=1, budget_minutes=0) -> dict:
    """Validate every recipe parameter before any work; raise RecipeError with one sentence."""
    try:
        if budget_minutes != 0:
            checks.positive_number("budget_minutes", budget_minutes, " (0 = off, else the minutes to plan for)")
        checks.positive_int("student_rounds", student_rounds, " (rounds of noisy-student training)")
        if student_variant and not is_hub_variant(student_variant):
            student_variant = resolve_variant(student_variant)
        checks.one_of("precision", precision, PRECISIONS)
        checks.one_of("strategy", strategy, STRATEGIES)
        if not is_hub_variant(variant):
            variant = resolve_variant(variant)
        if image_size != "auto":
            checks.image_size(image_size)
        checks.positive_int("batch_size", batch_size)
        checks.positive_int("epochs", epochs, " (the number of passes over the data)")
        checks.positive_number("lr", lr, " (the head's peak learning rate, e.g. 1e-3)")
        if lr_decay != "auto":
            checks.lr_decay(lr_decay)
        augmentation.parse(augment, "none")
        for name, value in (("ema", ema), ("tta", tta), ("progressive", progressive)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}.")
        checks.fraction("drop_path", drop_path, " (stochastic depth rate of the last block, e.g. 0.05)")
        checks.non_negative_int("max_train_images", max_train_images, " (0 = all)")
        checks.integer("seed", seed)
        if unfreeze not in ("auto", "", None):
            try:
                parse_schedule(unfreeze)
            except ValueError as e:
                raise ValueError(f"unfreeze={unfreeze!r} is not a schedule: {e}") from None
        try:
            formats = parse_formats(export or "")
        except ValueError as e:
            raise ValueError(f"export={export!r}: {e}") from None
    except ValueError as e:
        raise RecipeError(str(e)) from None
    if data_dir is not None and not Path(data_dir).is_dir():
        raise RecipeError(f"data_dir={str(data_dir)!r} does not exist: point it at a folder with one "
                          f"sub-folder of images per class.")
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
    weights = None if weights in (None, "", "none", "None") else weights
    if budget_minutes and (is_hub_variant(variant) or (weights is not None and Path(weights).is_file())
                           or unlabeled_dir):
        raise RecipeError("budget_minutes plans the variant, its weights tag, the image size and the epochs: use "
                          "it with a weights tag (imagenet, pycls, ...) or none, not with a weights file, a Hub "
                          "variant or unlabeled_dir; or set budget_minutes=0.")
    if weights is not None and not is_hub_variant(variant) and not Path(weights).is_file():
        if not pretrained.is_name(weights):
            raise RecipeError(f"weights={weights!r}: no such file; use a tag ('imagenet', 'pycls', 'keras', "
                              f"...), a Hub id, 'none' or the path of a weights file.")
        try:
            pretrained.resolve(get_config(variant), weights)
            if unlabeled_dir and student_variant and not is_hub_variant(student_variant):
                pretrained.resolve(get_config(student_variant), weights)
        except ValueError as e:
            raise RecipeError(str(e)) from None
    return dict(variant=variant, weights=weights, export=formats, output_dir=Path(output_dir),
                student_variant=student_variant or variant)


def _fetch_or_fallback(variant, weights):
    """The local weights file, or None after saying plainly that the weights cannot be had."""
    try:
        return fetch_weights(weights, get_config(variant), include_top=False)
    except WeightsUnavailableError as e:
        print(f"Pretrained weights are NOT available: {e}\n"
              f"=> Training {variant} FROM RANDOM INITIALIZATION instead. Expect lower accuracy "
              f"than fine-tuning a pretrained model; the whole network trains from epoch 0.")
        return None


def native_image_size(variant, weights, default, budget_gf=None) -> tuple[int, str]:
    """(size, why): the weights' native test (else train) size when larger than `default` and
    within `budget_gf` multiply-adds per training image (TRAIN_BUDGET_GF for this machine), else `default`."""
    if weights is None or Path(weights).is_file():
        return default, "the recipe's default" + ("" if weights else ", no pretrained weights")
    info = pretrained.resolve(get_config(variant), weights)
    if budget_gf is None:
        import tensorflow as tf
        accelerated = tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU")
        budget_gf = TRAIN_BUDGET_GF["accelerator" if accelerated else "cpu"]
    native = f"{info.name} was trained at {info.train_size} px and tested at {info.test_size} px"
    for size in (info.test_size, info.train_size):
        if size > default and complexity(variant, size)["flops"] / 1e9 <= budget_gf:
            return size, f"native size of {info.tag}: {native} (recipe default {default})"
    if max(info.test_size, info.train_size) > default:
        cost = complexity(variant, info.test_size)["flops"] / 1e9
        return default, (f"the recipe's default: {native}, but {info.test_size} px costs {cost:.1f} GF "
                         f"per training image, over this machine's budget of {budget_gf:g} GF; pass "
                         f"image_size={info.test_size} to use it anyway")
    return default, f"the recipe's default; {native}"


def prepare_weights(variant, weights, image_size, default_size):
    """(local weights file or None, image size) before the data is loaded: the weights are downloaded
    once (falling back to random initialization, said plainly, when they cannot be had), and
    image_size="auto" becomes their native size when this machine can afford it; says what it chose."""
    if is_hub_variant(variant):
        return None, default_size if image_size == "auto" else image_size
    path = _fetch_or_fallback(variant, weights)
    if path and not Path(weights).is_file():
        print(f"Weights of {variant} ('*': what weights='imagenet' means):\n{pretrained.list_weights(variant)}")
    if image_size != "auto":
        return path, image_size
    size, why = native_image_size(variant, weights if path else None, default_size)
    print(f"image_size {size}: {why}.")
    return path, size


def build_model(variant, weights, num_classes, image_size, dropout=0.0, seed=0, drop_path=0.0):
    """(model, pretrained): the recipe's model; says plainly when the pretrained weights are unavailable."""
    shape = (image_size, image_size, 3)
    if is_hub_variant(variant):
        handle = hub_handle(variant)
        print(f"Backbone: TF Hub model {handle} (one stage: 'stage4'); head: {num_classes} classes.")
        return hub_classifier(handle, num_classes, input_shape=shape, dropout=dropout, seed=seed), True
    path = _fetch_or_fallback(variant, weights)
    model = regnet(variant, num_classes=num_classes, weights=path, input_shape=shape, dropout=dropout,
                   seed=seed, drop_path_rate=drop_path)
    source = "random initialization" if path is None else f"weights {path}"
    print(f"Model: {variant} from {source}, {model.count_params():,} parameters, "
          f"{num_classes}-class head.")
    return model, path is not None


def noisy_student(p, model, data, weights, image_size, unlabeled_dir, rounds, epochs, seed, **finetune_kwargs):
    """The custom recipe's noisy-student run: `model` (fresh) is the teacher; students are
    `p["student_variant"]` with the same weights tag, built fresh each round with their noise; with `tta`
    the teacher's pseudo-labels average test-time views too. `unlabeled_dir="sample"`: the sample's
    unlabelled photos, whose true classes are then reported."""
    from workbench.train.noisy_student import noisy_student as train
    from workbench.data.sample import sample_truth, sample_unlabeled
    folder, truth = unlabeled_dir, None
    if unlabeled_dir == "sample":
        folder = sample_unlabeled()
        truth = sample_truth(folder)
    other = p["student_variant"] != p["variant"]
    student_weights = (weights if not other else None if is_hub_variant(p["student_variant"])
                       else _fetch_or_fallback(p["student_variant"], p["weights"]))

    def student(dropout=0.0, drop_path_rate=0.0):
        return build_model(p["student_variant"], student_weights, data.num_classes, image_size, dropout=dropout,
                           seed=seed, drop_path=drop_path_rate)[0]

    return train(data, folder, lambda: model, student, rounds=rounds, epochs=epochs, seed=seed, truth=truth,
                 teacher_tta=finetune_kwargs.get("tta", False), output_dir=p["output_dir"] / "noisy_student",
                 **finetune_kwargs)


def plan_run(p, data, minutes, reload, precision="auto"):
    """(plan, weights file or None, data): `wb.plan` for the recipe's data and weights tag; the chosen
    weights are fetched (when they cannot be had, it says so and plans again from random initialization,
    within the same budget), and the data reloaded at the plan's size by `reload(image_size, batch_size)`."""
    from workbench.plan.planner import plan as make_plan
    chosen = make_plan(data, minutes, weights=p["weights"], precision=precision)
    path = None
    if chosen.weights is not None:
        path = _fetch_or_fallback(chosen.variant, chosen.weights)
        if path is None:
            print("Planning again for random initialization, within the same budget:")
            chosen = make_plan(data, minutes, weights=None, precision=precision, started=chosen.started)
    p["variant"] = chosen.variant
    if (chosen.image_size, chosen.batch_size) != (data.image_size, data.batch_size):
        data = reload(chosen.image_size, chosen.batch_size)
    chosen.lap("setup")
    return chosen, path, data


def record_plan(metrics: dict, plan, result) -> dict:
    """metrics.json with the plan, its predicted and actual seconds (after the report's lap)."""
    plan.lap("report")
    metrics["plan"] = plan.record(result)
    predicted, actual = metrics["plan"]["predicted_seconds"], metrics["plan"]["actual_seconds"]
    print(f"{'phase':<10} {'predicted':>9} {'actual':>8}")
    for phase, seconds in predicted.items():
        print(f"{phase:<10} {seconds:>8.0f}s {actual[phase]:>7.0f}s")
    for line in metrics["plan"]["adapted"]:
        print(line)
    if is_chief():
        out = Path(metrics["output_dir"]) / "metrics.json"
        saved = json.loads(out.read_text())
        saved["plan"] = metrics["plan"]
        out.write_text(json.dumps(saved, indent=2, default=str))
    return metrics


def summary(metrics: dict, output_dir) -> str:
    """Final recipe summary: accuracy, per-class table, where the outputs went."""
    out = Path(output_dir)
    lines = [f"{metrics['variant']}: val_accuracy {metrics['val_accuracy']:.3f}, "
             f"val_loss {metrics['val_loss']:.3f} after {metrics['epochs_run']} epochs", "",
             f"{'class':<20} {'precision':>9} {'recall':>7} {'f1':>6} {'n':>5}"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<20} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} "
                     f"{m['support']:>5}")
    lines += ["", f"Outputs in {out.resolve()}:"]
    lines += [f"  {p.relative_to(out)}" for p in sorted(out.iterdir()) if p.name != "checkpoints"]
    return "\n".join(lines)


def save_outputs(result, data, output_dir, variant, export, extra=None) -> dict:
    """model.keras, metrics.json and the report pictures, plus the requested exports.

    `metrics["output_dir"]` says where they went: `output_dir`, or on a worker
    of a multi-worker cluster other than the chief a scratch folder (every
    worker evaluates, since that takes them all; only the chief writes).
    """
    out = Path(output_dir) if is_chief() else Path(tempfile.mkdtemp(prefix="worker-outputs-"))
    out.mkdir(parents=True, exist_ok=True)
    metrics = write_report(result.model, data, result, out, variant, extra=extra)
    result.model.save(out / "model.keras")
    if export:
        metrics["exports"] = export_all(result.model, out, export, data.class_names)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return {**metrics, "output_dir": str(out)}
