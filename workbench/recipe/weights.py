"""The recipes' weights and model: one fetch of the checked weights, the image size they suggest, the model."""
from __future__ import annotations

from pathlib import Path

from workbench.models import published
from workbench.models.convert import fetch_published, fetch_weights
from workbench.models.design import complexity, get_config
from workbench.models.published import WeightsUnavailableError
from workbench.models.regnet import regnet
from workbench.models.tfhub import hub_classifier, hub_handle, is_hub_variant
from workbench.recipe.params import Weights

# Multiply-adds (GF) per training image a recipe accepts when it picks a larger image size by itself
# (image_size="auto"): on a CPU, RegNetY-200MF at 224 px (0.2 GF) trains at ~28 img/s on 2 cores, so
# 1 GF keeps an epoch of a thousand images within minutes; a GPU or TPU affords 384 px on the big models.
TRAIN_BUDGET_GF = {"cpu": 1.0, "accelerator": 100.0}


def fetch_or_fallback(variant, weights) -> str | None:
    """The local weights file (one fetch), or None after saying plainly that the weights cannot be had."""
    weights = Weights.of(variant, weights)
    if weights.spec is None or is_hub_variant(variant):
        return None
    try:
        if weights.info is not None:  # a tag or Hub id, resolved once by Weights.of
            return fetch_published(weights.info, get_config(variant), include_top=False)
        return fetch_weights(weights.spec, get_config(variant), include_top=False)
    except WeightsUnavailableError as e:
        print(f"Pretrained weights are NOT available: {e}\n"
              f"=> Training {variant} FROM RANDOM INITIALIZATION instead. Expect lower accuracy "
              f"than fine-tuning a pretrained model; the whole network trains from epoch 0.")
        return None


def native_image_size(variant, weights, default, budget_gf=None) -> tuple[int, str]:
    """(size, why): the weights' native test (else train) size when larger than `default` and
    within `budget_gf` multiply-adds per training image (TRAIN_BUDGET_GF for this machine), else `default`."""
    weights = Weights.of(variant, weights)
    if weights.info is None:
        return default, "the recipe's default" + ("" if weights.spec else ", no pretrained weights")
    info = weights.info
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
    """(local weights file or None, image size) before the data is loaded: the weights are fetched
    once (falling back to random initialization, said plainly, when they cannot be had), and
    image_size="auto" becomes their native size when this machine can afford it; says what it chose."""
    if is_hub_variant(variant):
        return None, default_size if image_size == "auto" else image_size
    weights = Weights.of(variant, weights)
    path = fetch_or_fallback(variant, weights)
    if path and weights.info is not None:
        print(f"Weights of {variant} ('*': what weights='imagenet' means):\n{published.list_weights(variant)}")
    if image_size != "auto":
        return path, image_size
    size, why = native_image_size(variant, weights if path else Weights(), default_size)
    print(f"image_size {size}: {why}.")
    return path, size


def build_model(variant, weights_file, num_classes, image_size, dropout=0.0, seed=0, drop_path=0.0,
                multi_label=False):
    """(model, pretrained): the recipe's model from a local weights file (or None: random initialization);
    a sigmoid head for multi-label data, else a softmax."""
    shape = (image_size, image_size, 3)
    if is_hub_variant(variant):
        handle = hub_handle(variant)
        print(f"Backbone: TF Hub model {handle} (one stage: 'stage4'); head: {num_classes} classes.")
        return hub_classifier(handle, num_classes, input_shape=shape, dropout=dropout, seed=seed), True
    if weights_file is not None and not Path(weights_file).is_file():
        raise ValueError(f"weights_file={weights_file!r} is not a file: fetch the weights first "
                         "(recipe.prepare_weights), or pass None for random initialization.")
    model = regnet(variant, num_classes=num_classes, weights=weights_file, input_shape=shape, dropout=dropout,
                   seed=seed, drop_path_rate=drop_path, classifier_activation="sigmoid" if multi_label else "softmax")
    source = "random initialization" if weights_file is None else f"weights {weights_file}"
    print(f"Model: {variant} from {source}, {model.count_params():,} parameters, "
          f"{num_classes}-class {'sigmoid (multi-label)' if multi_label else 'softmax'} head.")
    return model, weights_file is not None
