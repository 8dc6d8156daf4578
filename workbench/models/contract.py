"""The model contract: stages, the feature/head split, logits or probabilities, what can train.

Every workbench model (`wb.regnet`, `wb.hub_classifier`) names each layer
`<stage>_...` with the stage in STAGES. Its pooled feature vector is the
output of the layer FEATURES, and the classifier is the layer CLASSIFIER,
optionally behind a DROPOUT layer. Other modules ask the functions here instead of
spelling layer names (as timm's `forward_features` / `forward_head`).
"""
from __future__ import annotations

import keras

STAGES = ("stem", "stage1", "stage2", "stage3", "stage4", "head")
FEATURES = "head_pool"
DROPOUT = "head_dropout"
CLASSIFIER = "head_fc"

_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")
_PASS_THROUGH = (keras.layers.Dropout, keras.layers.Identity, keras.layers.Reshape, keras.layers.Flatten)


# ---------------------------------------------------------------- stages

def stage_of(path) -> str | None:
    """The stage of a layer name or variable path (`stage3_block1_conv1/kernel` -> "stage3"), or None."""
    for part in str(path).split("/"):
        prefix = part.split("_", 1)[0]
        if prefix in STAGES:
            return prefix
    return None


def depth_from_head(stage: str) -> int:
    """How many stages below the head: head 0, stage4 1, ..., stem 5."""
    return STAGES[::-1].index(stage)


def check_stage(stage) -> str:
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; stages are {', '.join(STAGES)}.")
    return stage


def stage_layers(model: keras.Model, stage: str) -> list:
    """The layers of `model` that belong to `stage` (one of STAGES)."""
    check_stage(stage)
    return [layer for layer in model.layers if stage_of(layer.name) == stage]


def model_stages(model: keras.Model) -> list[str]:
    """The stages `model` has, in STAGES order."""
    present = {stage_of(layer.name) for layer in model.layers}
    return [s for s in STAGES if s in present]


def trainable_candidates(model: keras.Model) -> list:
    """Every variable of `model` that trains when its layer is trainable, frozen layers included.

    Same order as `model.trainable_variables` with every layer trainable, so an
    optimizer built on it saves and loads like one built after unfreezing all.
    """
    ids = set()
    for layer in model._flatten_layers(include_self=True):
        ids.update(id(v) for v in layer._trainable_variables)
    seen, out = set(), []
    for v in model.variables:
        if id(v) in ids and id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


# ---------------------------------------------------------------- features and head

def features(model: keras.Model):
    """The pooled feature tensor of `model` (the FEATURES layer's output)."""
    try:
        return model.get_layer(FEATURES).output
    except ValueError:
        raise ValueError(f"Model '{model.name}' has no pooled feature layer {FEATURES!r}: build it "
                         f"with wb.regnet(..., include_top=True) or pooling='avg', or wb.hub_classifier.") from None


def feature_extractor(model: keras.Model) -> keras.Model:
    """The backbone of `model` up to its pooled features, sharing weights."""
    return keras.Model(model.inputs, features(model), name=f"{model.name}_features")


def head_model(model: keras.Model) -> keras.Model | None:
    """Pooled features -> outputs, sharing weights, when the head is a plain chain after FEATURES; else None.

    This is what lets a frozen backbone's features be computed once and the
    head trained on them.
    """
    names = [layer.name for layer in model.layers]
    if FEATURES not in names or names[-1] == FEATURES or len(model.outputs) != 1:
        return None
    if any(stage_of(n) != "head" for n in names[names.index(FEATURES) + 1:]):
        return None
    return keras.Model(features(model), model.outputs[0], name=f"{model.name}_head")


def classifier(model: keras.Model):
    """The classifier layer (CLASSIFIER), or None."""
    try:
        return model.get_layer(CLASSIFIER)
    except ValueError:
        return None


# ---------------------------------------------------------------- outputs

def _output_layer(model: keras.Model):
    """The layer that computes the model's (first) output, looking through pass-through layers."""
    tensor = model.outputs[0]
    while True:
        layer, node_index, _ = tensor._keras_history
        linear = isinstance(layer, keras.layers.Activation) and _activation_name(layer) == "linear"
        if not (isinstance(layer, _PASS_THROUGH) or linear):
            return layer
        tensor = layer._inbound_nodes[node_index].input_tensors[0]


def _activation_name(layer) -> str | None:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) if activation is not None else None


def outputs_logits(model: keras.Model) -> bool:
    """True when the model outputs logits (its last computing layer is linear), False for probabilities.

    Probabilities: a softmax / sigmoid activation or a `Softmax` layer at the
    end. Logits: a layer with a linear activation. Anything else counts as
    probabilities, Keras' own default for its losses.
    """
    layer = _output_layer(model)
    if isinstance(layer, keras.layers.Softmax) or _activation_name(layer) in _PROBABILITY_ACTIVATIONS:
        return False
    return _activation_name(layer) == "linear"


def output_activation(model: keras.Model) -> str | None:
    """The activation computing the model's output: "softmax", "sigmoid", "linear" (logits), ..."""
    layer = _output_layer(model)
    return "softmax" if isinstance(layer, keras.layers.Softmax) else _activation_name(layer)


def probabilities(model: keras.Model, outputs):
    """The model's outputs as probabilities (softmax over logits, unchanged otherwise)."""
    return keras.ops.softmax(outputs, axis=-1) if outputs_logits(model) else outputs


DEFAULT_IMAGE_SIZE = 224  # what a model that accepts any size is fed by exports and wb.predict


def input_size(model: keras.Model) -> tuple[int, int]:
    """The (height, width) the model is fed; DEFAULT_IMAGE_SIZE where it accepts any size."""
    shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
    return int(shape[1] or DEFAULT_IMAGE_SIZE), int(shape[2] or DEFAULT_IMAGE_SIZE)
