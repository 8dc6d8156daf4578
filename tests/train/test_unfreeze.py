"""Schedules and GradualUnfreezing on a real (tiny) RegNet inside one fit."""

import numpy as np
import keras
import pytest

import workbench as wb
from conftest import tiny_regnet
from workbench.train.schedule import Schedule, parse_schedule
from workbench.train.unfreeze import GradualUnfreezing


def test_parse_schedule_forms():
    assert parse_schedule("0:head,2:stage4,4:stage3+stage2") == {
        0: ("head",), 2: ("stage4",), 4: ("stage3", "stage2")}
    assert parse_schedule({0: "head", 2: ["stage4"]}) == {0: ("head",), 2: ("stage4",)}
    assert parse_schedule("0:all")[0] == tuple(reversed(wb.STAGES))
    assert Schedule.parse("0:head,2:stage4").stages_at(3) == ("head", "stage4")


def test_schedule_is_a_value_parsed_once():
    staged = Schedule.parse(" 0:head, 2:stage4 ,4:stage2+stage3")
    assert Schedule.parse(staged) is staged                        # a Schedule passes through as it is
    assert str(staged) == "0:head,2:stage4,4:stage3+stage2"        # canonical: stages top-down, no spaces
    assert staged == Schedule.parse({0: "head", 2: "stage4", 4: ["stage3", "stage2"]})
    assert str(Schedule.parse("0:all")) == "0:all" and str(Schedule.parse("0:head,2:all")) == "0:head,2:all"
    assert staged.head_only_until == 2 and Schedule.parse("0:all").head_only_until == 0
    assert Schedule.parse("0:head").head_only_until is None        # only the head ever trains
    assert staged.unfrozen_at(2) == ("stage4",) and staged.unfrozen_at(3) == ()
    model = tiny_regnet()
    assert staged.check(model, epochs=5) is staged
    with pytest.raises(ValueError, match="run has 4 epochs"):
        staged.check(model, epochs=4)
    assert wb.GradualUnfreezing(staged).schedule is staged


@pytest.mark.parametrize("bad, match", [
    ("0:head,2:stage9", "unknown stage 'stage9'"),
    ({0: "head", -1: "stage4"}, "negative"),
    ("0:head,-2:stage4", "negative"),
    ("", "Empty"),
    ({}, "Empty"),
    ("0-head", "Malformed"),
    ("x:head", "not an epoch"),
    ("0:head,0:stage4", "twice"),
    ("2:stage4", "unfreezes nothing before epoch 2"),
    ("0:", "unknown stage ''"),
])
def test_parse_schedule_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_schedule(bad)


class _Snapshots(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.after = []

    def on_epoch_end(self, epoch, logs=None):
        self.after.append({v.path: v.numpy().copy() for v in self.model.variables})


def test_frozen_stages_and_bn_statistics_stay_put_until_unfrozen():
    model = tiny_regnet()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = np.arange(16) % 3
    before = {v.path: v.numpy().copy() for v in model.variables}
    snaps, unfreeze = _Snapshots(), GradualUnfreezing({0: "head", 1: "stage4"}, verbose=0)
    history = model.fit(x, y, batch_size=8, epochs=2, callbacks=[unfreeze, snaps], verbose=0)

    def changed(snapshot, prefix, suffix):
        paths = [p for p in before if p.startswith(prefix) and p.endswith(suffix)]
        assert paths, (prefix, suffix)
        return [not np.array_equal(before[p], snapshot[p]) for p in paths]

    first, second = snaps.after
    for stage in ("stem", "stage1", "stage2", "stage3", "stage4"):
        for suffix in ("kernel", "gamma", "moving_mean", "moving_variance"):
            assert not any(changed(first, stage, suffix)), f"{stage} {suffix} moved while frozen"
    assert all(changed(first, "head_fc", "kernel"))
    # epoch 1: stage4 trains (weights and BN statistics), deeper stages still frozen
    for suffix in ("kernel", "gamma", "moving_mean", "moving_variance"):
        assert all(changed(second, "stage4", suffix)), f"stage4 {suffix} did not train after unfreezing"
        assert not any(changed(second, "stage3", suffix))
    assert unfreeze.events == [{"epoch": 0, "stages": ["head"]}, {"epoch": 1, "stages": ["stage4"]}]
    assert len(history.history["loss"]) == 2
    assert int(model.optimizer.iterations.numpy()) == 4  # one optimizer, state kept across the unfreeze


def test_optimizer_built_while_frozen_is_reported_before_training():
    model = tiny_regnet()
    for layer in wb.stage_layers(model, "stage4"):
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)  # built on a subset: stage4 can never train
    x, y = np.zeros((4, 32, 32, 3), "float32"), np.zeros(4, "int64")
    with pytest.raises(ValueError, match="DiscriminativeOptimizer"):
        model.fit(x, y, epochs=2, callbacks=[GradualUnfreezing("0:head,1:stage4", verbose=0)], verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_schedule_checked_against_model():
    no_head = tiny_regnet(include_top=False)
    with pytest.raises(ValueError, match="does not have"):
        GradualUnfreezing("0:head").set_model(no_head)
