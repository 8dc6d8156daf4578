"""The model contract, the argument rules and the unfreeze policy: one answer each, everywhere."""
import math

import keras
import numpy as np
import pytest
from conftest import tiny_regnet

import workbench as wb
from workbench.utils import checks, runtime
from workbench.models import contract
from workbench.train.unfreeze import unfreeze_policy


def _head(*layers):
    x = inputs = keras.Input((8,))
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("layers, logits", [
    ([keras.layers.Dense(3)], True),
    ([keras.layers.Dense(3, activation="softmax")], False),
    ([keras.layers.Dense(3), keras.layers.Activation("softmax")], False),
    ([keras.layers.Dense(3), keras.layers.Softmax()], False),
    ([keras.layers.Dense(3), keras.layers.Dropout(0.2)], True),
    ([keras.layers.Dense(3, activation="sigmoid"), keras.layers.Activation("linear")], False),
])
def test_outputs_logits_looks_at_the_layer_that_computes_the_output(layers, logits):
    model = _head(*layers)
    assert contract.outputs_logits(model) is logits
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    probs = np.asarray(contract.probabilities(model, model(x)))
    if layers[0].activation.__name__ != "sigmoid":
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_every_consumer_asks_the_contract():
    """finetune's loss, the report's probabilities and lr_find's loss agree on a softmax-after-linear head."""
    base = tiny_regnet(classifier_activation=None)
    model = keras.Model(base.inputs, keras.layers.Activation("softmax", name="head_softmax")(base.outputs[0]))
    assert not contract.outputs_logits(model) and contract.outputs_logits(base)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(contract.probabilities(model, model(x))),
                               np.asarray(contract.probabilities(base, base(x))), rtol=1e-5, atol=1e-6)


def test_features_head_and_stages(tiny_model):
    features = contract.feature_extractor(tiny_model)
    head = contract.head_model(tiny_model)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(head(features(x)), tiny_model(x), rtol=1e-5, atol=1e-6)
    assert contract.model_stages(tiny_model) == list(wb.STAGES)
    assert [layer.name for layer in contract.stage_layers(tiny_model, "head")] == [contract.FEATURES,
                                                                                  contract.CLASSIFIER]
    assert contract.head_model(tiny_regnet(include_top=False, pooling="avg")) is None
    with pytest.raises(ValueError, match="no pooled feature layer"):
        contract.feature_extractor(tiny_regnet(include_top=False))


def test_trainable_candidates_include_frozen_layers(tiny_model):
    everything = [v.path for v in tiny_model.trainable_variables]
    for layer in contract.stage_layers(tiny_model, "stage2"):
        layer.trainable = False
    assert len(tiny_model.trainable_variables) < len(everything)
    assert [v.path for v in contract.trainable_candidates(tiny_model)] == everything


@pytest.mark.parametrize("check, value", [
    (lambda v: checks.positive_number("lr", v), True),
    (lambda v: checks.positive_number("lr", v), math.inf),
    (lambda v: checks.positive_number("lr", v), math.nan),
    (lambda v: checks.positive_number("lr", v), 0),
    (lambda v: checks.positive_int("epochs", v), True),
    (lambda v: checks.positive_int("epochs", v), 2.0),
    (checks.lr_decay, 0.5),
    (checks.lr_decay, math.inf),
    (checks.image_size, 31),
    (lambda v: checks.fraction("val_split", v, low_open=True), 0.0),
])
def test_rules_refuse(check, value):
    with pytest.raises(ValueError):
        check(value)


def test_one_lr_decay_rule_for_the_optimizer_the_recipe_and_finetune(tiny_model):
    for bad in (0.5, -1):
        with pytest.raises(ValueError, match="lr_decay must be a number >= 1"):
            wb.DiscriminativeOptimizer(keras.optimizers.Adam(1e-3), tiny_model, decay=bad)
        with pytest.raises(ValueError, match="lr_decay must be a number >= 1"):
            unfreeze_policy("auto", 5, pretrained=True, lr_decay=bad)
    assert wb.DiscriminativeOptimizer(keras.optimizers.Adam(1e-3), tiny_model, decay=1).multipliers["stem"] == 1


def test_unfreeze_policy():
    pretrained = unfreeze_policy("auto", 9, pretrained=True)  # the benchmark's winner: see workbench.train.policy
    assert str(pretrained.schedule) == "0:all" and pretrained.lr_decay == 1.0
    assert unfreeze_policy("auto", 9, pretrained=True, lr_decay=2.6).lr_decay == 2.6
    staged = unfreeze_policy("0:head,3:stage4,5:stage3+stage2,7:stage1+stem", 9, pretrained=True)
    assert staged.lr_decay == 2.6 and staged.reason == "the schedule given"
    scratch = unfreeze_policy("auto", 9, pretrained=False, lr_decay=2.6)
    assert str(scratch.schedule) == "0:all" and scratch.lr_decay == 1.0
    given = unfreeze_policy("0:head,2:all", 9, pretrained=False)
    assert str(given.schedule) == "0:head,2:all" and given.lr_decay == 1.0
    assert "0:head,2:all" in str(given)
    auto = wb.training_policy("auto", 9, pretrained=True)
    assert str(auto.unfreeze) == "0:all" and "full fine-tuning" in auto.reason
    again = wb.training_policy(auto.unfreeze, 9, pretrained=True, lr_decay=auto.lr_decay)  # a schedule given
    assert again.reason == "the schedule given" and again.lr_decay == 1.0
    assert wb.training_policy("0:all", 9, pretrained=True).lr_decay == 2.6  # a schedule given, decay auto
    with pytest.raises(ValueError, match="unknown stage"):
        unfreeze_policy("0:hed", 9)


def test_startup_noise_is_dropped_and_nothing_else():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:17.1 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n"
            "E0000 00:00:17.2 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: UNKNOWN ERROR (303)\n"
            "I0000 00:00:17.2 1 port.cc:153] oneDNN custom operations are on. You may see slightly different\n"
            "E0000 00:00:17.3 1 some_kernel.cc:10] a real error\n"
            "W0000 00:00:17.4 1 other.cc:5] a real warning\n")
    assert runtime.drop_startup_noise(text) == ("E0000 00:00:17.3 1 some_kernel.cc:10] a real error\n"
                                               "W0000 00:00:17.4 1 other.cc:5] a real warning\n")
