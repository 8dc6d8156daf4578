"""DiscriminativeOptimizer: the update of each stage, not its gradient, is scaled."""

import numpy as np
import keras
import pytest
import tensorflow as tf

import workbench as wb
from conftest import slow, tiny_regnet
from workbench.models.contract import stage_of
from workbench.train.discriminative import DiscriminativeOptimizer


@pytest.fixture(scope="module")
def model():
    return tiny_regnet()


@pytest.fixture(scope="module")
def grads(model):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 3
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
    return tape.gradient(loss, model.trainable_variables), [v.numpy() for v in model.trainable_variables]


def _step(model, grads, opt, grad_scale=None):
    """One update from the same state; mean |update| per stage."""
    g, start = grads
    for v, w in zip(model.trainable_variables, start):
        v.assign(w)
    if grad_scale:
        g = [gi * grad_scale(v) for gi, v in zip(g, model.trainable_variables)]
    opt.apply(g, model.trainable_variables)
    per_stage = {}
    for v, w in zip(model.trainable_variables, start):
        per_stage.setdefault(stage_of(v.path), []).append(np.abs(v.numpy() - w).ravel())
    for v, w in zip(model.trainable_variables, start):
        v.assign(w)
    return {s: float(np.concatenate(d).mean()) for s, d in per_stage.items()}


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "adamw": lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.5),
    "sgd_momentum": lambda: keras.optimizers.SGD(1e-2, momentum=0.9),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_ratio_matches_multiplier(model, grads, name):
    make = OPTIMIZERS[name]
    plain = _step(model, grads, make())
    disc_opt = DiscriminativeOptimizer(make(), model, decay=2.6)
    disc = _step(model, grads, disc_opt)
    scaled_grad = _step(model, grads, make(), grad_scale=disc_opt.multiplier_for)
    print(f"\n{name}: stage: multiplier | update ratio (discriminative) | update ratio (gradient scaling)")
    for stage in wb.STAGES:
        # Mean |update| of the stage relative to the head, normalized by the same ratio for the
        # plain optimizer (which removes the stage's own gradient magnitude from the comparison).
        ratio = (disc[stage] / disc["head"]) / (plain[stage] / plain["head"])
        ratio_gs = (scaled_grad[stage] / scaled_grad["head"]) / (plain[stage] / plain["head"])
        m = disc_opt.multipliers[stage]
        print(f"  {stage:7s} {m:.4f} | {ratio:.4f} | {ratio_gs:.4f}")
        assert ratio == pytest.approx(m, rel=0.02)
        if name != "sgd_momentum" and stage != "head":
            # Adam normalizes a scaled gradient away: gradient scaling does NOT give the multiplier.
            assert abs(ratio_gs - 1.0) < 0.05 and abs(ratio_gs - m) > 0.5 * (1 - m)


def test_multipliers_and_decay():
    opt = DiscriminativeOptimizer(keras.optimizers.Adam(1e-3), decay=2.0, multipliers={"stage1": 0.05})
    assert opt.multipliers["head"] == 1.0 and opt.multipliers["stage4"] == 0.5
    assert opt.multipliers["stage1"] == 0.05 and opt.multipliers["stem"] == 2.0 ** -5


def test_bad_input(model):
    with pytest.raises(ValueError, match="unknown stage 'stage9'"):
        DiscriminativeOptimizer(keras.optimizers.Adam(1e-3), model, multipliers={"stage9": 0.1})
    with pytest.raises(ValueError, match="positive"):
        DiscriminativeOptimizer(keras.optimizers.Adam(1e-3), model, multipliers={"stage1": 0.0})
    with pytest.raises(ValueError, match="decay"):
        DiscriminativeOptimizer(keras.optimizers.Adam(1e-3), model, decay=-1)
    with pytest.raises(ValueError, match="learning rate"):
        DiscriminativeOptimizer(keras.optimizers.Adam(0.0), model)
    no_head = tiny_regnet(include_top=False)
    with pytest.raises(ValueError, match="does not have"):
        DiscriminativeOptimizer(keras.optimizers.Adam(1e-3), no_head, multipliers={"head": 0.5})


def test_builds_for_frozen_layers_and_saves_with_state(model, grads, tmp_path):
    """Built for every stage while some are frozen; save + load_model restores the state."""
    from workbench.train.lr_schedules import WarmupCosine

    for layer in wb.stage_layers(model, "stage1"):
        layer.trainable = False
    inner = keras.optimizers.AdamW(WarmupCosine(1e-3, total_steps=100, warmup_steps=10), weight_decay=0.01)
    opt = DiscriminativeOptimizer(inner, model, decay=2.6)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    opt.build(model.trainable_variables)  # what fit does: only the trainable ones are passed
    for layer in wb.stage_layers(model, "stage1"):
        layer.trainable = True  # unfrozen after the build: no "Unknown variable"
    g, start = grads
    opt.apply(g, model.trainable_variables)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert isinstance(loaded.optimizer, DiscriminativeOptimizer)
    assert loaded.optimizer.multipliers == opt.multipliers
    assert int(loaded.optimizer.iterations.numpy()) == 1
    assert len(loaded.optimizer.variables) == len(opt.variables)
    for a, b in zip(opt.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy())
    for v, w in zip(model.trainable_variables, start):
        v.assign(w)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: keras.optimizers.Adam(1e-2), marks=slow),
    lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.3),
    pytest.param(lambda: keras.optimizers.SGD(1e-2, momentum=0.9, nesterov=True, weight_decay=0.1), marks=slow),
    pytest.param(lambda: keras.optimizers.SGD(1e-2), marks=slow),
    pytest.param(lambda: keras.optimizers.RMSprop(1e-2), marks=slow),   # no fused kernel: Keras' own update_step
], ids=["adam", "adamw", "sgd_nesterov", "sgd", "rmsprop"])
def test_fused_steps_equal_keras_steps(model, grads, make):
    """With every multiplier 1, the wrapped optimizer's (fused) steps are the plain Keras optimizer's."""
    g, start = grads
    variables = model.trainable_variables
    after = []
    for opt in (make(), DiscriminativeOptimizer(make(), model, decay=1.0)):
        for v, w in zip(variables, start):
            v.assign(w)
        step = tf.function(lambda: opt.apply(g, variables))
        for _ in range(3):
            step()
        after.append([v.numpy().copy() for v in variables])
    for v, w in zip(variables, start):
        v.assign(w)
    for ours, theirs in zip(*after[::-1]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)  # updates are ~1e-2
    assert not all(np.array_equal(a, w) for a, w in zip(after[1], start))
