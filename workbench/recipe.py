"""What the recipe notebooks call: parameter checks, model choice, outputs, summary.

Recipes (`recipes/*.ipynb`) keep narrative and parameters; the logic that
would make a cell longer than a dozen lines lives here. Parameters are checked
with the library's own rules (`workbench.checks` and each component's parser),
so a recipe and the Python API accept and refuse the same values.
"""
from __future__ import annotations

import json
from pathlib import Path

from workbench import checks
from workbench.design import resolve_variant
from workbench.export import export_all, parse_formats
from workbench.hub import hub_classifier, hub_handle, is_hub_variant
from workbench.model import regnet
from workbench.reports import write_report
from workbench.unfreeze import parse_schedule


class RecipeError(ValueError):
    """A recipe parameter is wrong; the message says which and what is expected."""


def check_params(*, variant, weights, image_size, batch_size, epochs, unfreeze, lr, lr_decay,
                 seed, max_train_images, output_dir, export, data_dir=None, dataset=None) -> dict:
    """Validate every recipe parameter before any work; raise RecipeError with one sentence."""
    try:
        if not is_hub_variant(variant):
            variant = resolve_variant(variant)
        checks.image_size(image_size)
        checks.positive_int("batch_size", batch_size)
        checks.positive_int("epochs", epochs, " (the number of passes over the data)")
        checks.positive_number("lr", lr, " (the head's peak learning rate, e.g. 1e-3)")
        checks.lr_decay(lr_decay)
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
    if not str(output_dir):
        raise RecipeError("output_dir must name a folder for the results.")
    if dataset is not None and not (isinstance(dataset, str) and dataset):
        raise RecipeError(f"dataset must be the name of a TFDS image-classification dataset, got {dataset!r}.")
    weights = None if weights in (None, "", "none", "None") else weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise RecipeError(f"weights={weights!r}: no such file; use 'imagenet', 'none' or the path of a "
                          f"weights file.")
    return dict(variant=variant, weights=weights, export=formats, output_dir=Path(output_dir))


def build_model(variant, weights, num_classes, image_size, dropout=0.0, seed=0):
    """(model, pretrained): the recipe's model; says plainly when ImageNet weights are unavailable."""
    shape = (image_size, image_size, 3)
    if is_hub_variant(variant):
        handle = hub_handle(variant)
        print(f"Backbone: TF Hub model {handle} (one stage: 'stage4'); head: {num_classes} classes.")
        return hub_classifier(handle, num_classes, input_shape=shape, dropout=dropout, seed=seed), True
    try:
        model = regnet(variant, num_classes=num_classes, weights=weights, input_shape=shape,
                       dropout=dropout, seed=seed)
    except OSError as e:
        if weights != "imagenet":
            raise
        print(f"ImageNet weights are NOT available: {e}\n"
              f"=> Training {variant} FROM RANDOM INITIALIZATION instead. Expect lower accuracy "
              f"than fine-tuning a pretrained model; the whole network trains from epoch 0.")
        return regnet(variant, num_classes=num_classes, input_shape=shape, dropout=dropout, seed=seed), False
    source = "random initialization" if weights is None else f"weights {weights}"
    print(f"Model: {variant} from {source}, {model.count_params():,} parameters, "
          f"{num_classes}-class head.")
    return model, weights is not None


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
    """model.keras, metrics.json and the report pictures, plus the requested exports."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = write_report(result.model, data, result, out, variant, extra=extra)
    result.model.save(out / "model.keras")
    if export:
        metrics["exports"] = export_all(result.model, out, export, data.class_names)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics
