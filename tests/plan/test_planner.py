"""wb.plan: a measured machine, a cost model, the best candidate within the budget, and a guard that keeps it."""
import dataclasses
import json
import time

import keras
import numpy as np
import pytest
from conftest import slow, synthetic_machine, tiny_regnet

import workbench as wb
from workbench.plan import planner
from workbench.plan.machine import measure
from workbench.plan.scoring import LINEAR_PROBE_POINTS
from workbench.models.design import complexity


@pytest.fixture(scope="module")
def data():
    return wb.load_folder(wb.sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=48,
                          verbose=False)


def test_activations_are_the_papers():
    # pycls MODEL_ZOO.md, activations (M): RegNetX-200MF 2.2, 1.6GF 7.9, 8GF 14.1; RegNetY-1.6GF 8.0, 4GF 12.3
    for variant, acts in (("regnetx_200mf", 2.2), ("regnetx_1.6gf", 7.9), ("regnetx_8gf", 14.1),
                          ("regnety_1.6gf", 8.0), ("regnety_4gf", 12.3)):
        assert complexity(variant)["acts"] / 1e6 == pytest.approx(acts, abs=0.05)


def test_fit_recovers_the_costs():
    machine = synthetic_machine()
    assert machine.train_per_act == pytest.approx(6e-9, rel=1e-6)
    assert machine.train_per_flop == pytest.approx(1e-11, rel=1e-6)
    assert machine.infer_per_act == pytest.approx(1e-9, rel=1e-6)
    assert machine.trace_per_block == pytest.approx((8.0 / 13 + 8.0 / 15) / 2)   # 13 and 15 blocks


def test_more_minutes_buy_a_better_plan_within_the_budget(data):
    machine = synthetic_machine()
    plans = [planner.plan(data, m, weights="imagenet", machine=machine, verbose=False) for m in (2, 5, 15)]
    for p, minutes in zip(plans, (2, 5, 15)):
        assert p.predicted_seconds <= minutes * 60 * planner.MARGIN + 1e-6
        c = p.chosen
        assert c.score == pytest.approx(c.prior - c.resolution - c.undertrained - c.probe_cost)
        assert all(r.score <= c.score for r in p.runners_up)
        assert c.weights is not None and c.prior > 70                         # an ImageNet prior
    assert plans[0].chosen.score < plans[1].chosen.score < plans[2].chosen.score
    table = plans[1].table()
    assert "Plan for 5 min" in table and "score" in table and "Runners-up" in table and "first step" in table


def test_random_initialization_plans_for_the_images_own_size(data):
    p = planner.plan(data, 5, weights=None, machine=synthetic_machine(), verbose=False)
    assert p.weights is None and p.chosen.prior == 0.0
    assert p.image_size <= 2 * 128                             # the sample's photos are 128 px
    assert "128 px" in " ".join(p.notes)


def test_when_fine_tuning_cannot_fit_a_linear_probe_can(data):
    fast = synthetic_machine()
    slow_training = dataclasses.replace(fast, train_per_act=fast.train_per_act * 1e4,
                                        train_per_flop=fast.train_per_flop * 1e4)
    p = planner.plan(data, 2, machine=slow_training, verbose=False)
    assert p.unfreeze == "0:head" and p.chosen.probe_cost == LINEAR_PROBE_POINTS
    assert "features" in p.chosen.phases and "first step" not in p.chosen.phases
    assert "linear probe (head only" in p.table()
    assert planner.plan(data, 2, machine=fast, verbose=False).unfreeze == "auto"   # full fine-tuning fits


def test_a_budget_without_one_epoch_is_refused_before_training(data):
    slow = synthetic_machine(speedup=1e-4)
    with pytest.raises(ValueError, match="cannot fit one epoch of the cheapest candidate"):
        planner.plan(data, 0.5, machine=slow, verbose=False)
    with pytest.raises(ValueError, match="minutes must be a positive finite number"):
        planner.plan(data, 0, machine=slow, verbose=False)


@slow
def test_measure_times_real_steps_and_caches_the_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("REGNET_WORKBENCH_CACHE", str(tmp_path))
    probes = (("regnety_200mf", (32, 48)),)
    machine = measure(probes=probes, batch=4, verbose=False)
    assert len(machine.points) == 2 and machine.trace_per_block > 0 and machine.save_per_param > 0
    for point in machine.points:   # the fitted model reproduces what it measured
        cx = complexity(point["variant"], point["size"], 10)
        assert machine.train_image(cx) == pytest.approx(point["train"], rel=0.3)
    saved = list((tmp_path / "planner").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["points"] == machine.points
    start = time.perf_counter()
    assert measure(probes=probes, batch=4, verbose=False) == machine     # read back, not measured
    assert time.perf_counter() - start < 1


def test_guard_keeps_more_for_the_report_when_epochs_run_slower_than_planned(data, monkeypatch):
    """On a clock the test drives: epochs take 3x their planned time, so the 5 s kept for the report become
    15 s, and training stops after the epochs that fit before them; at the planned pace it keeps 5 s."""
    p = planner.plan(data, 2, weights=None, candidates=["regnety_200mf"], sizes=(32,),
                     machine=synthetic_machine(speedup=100), verbose=False)
    planned = p.chosen.phases["epochs"] / p.epochs
    model = tiny_regnet()

    def stop_after(pace):
        clock = [p.started]
        monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
        guard = p.guard(reserve=5.0)
        guard.set_model(model)
        model.stop_training = False
        for epoch in range(p.epochs):
            clock[0] = p.deadline - 60 if epoch == 0 else clock[0]   # the first epoch leaves 60 s
            guard.on_epoch_begin(epoch)
            clock[0] += pace
            guard.on_epoch_end(epoch)
            if model.stop_training:
                return epoch + 1, guard.adapted
        return p.epochs, guard.adapted

    slow = 3 * planned
    epochs, adapted = stop_after(slow)
    assert epochs == 1 + int((60 - slow - 15) // slow) and "(15 s kept for it)" in adapted[0]
    assert stop_after(planned)[0] == min(p.epochs, 1 + int((60 - planned - 5) // planned))


@pytest.mark.parametrize("unfreeze,budget_spent", [pytest.param("auto", False, marks=slow), ("0:head", True)])
def test_guard_cuts_the_epochs_that_would_overrun(data, unfreeze, budget_spent):
    """Epochs slowed to at least 1 s each (a callback sleeps), with 2 s fewer left of the budget than the
    plan has epochs: the guard stops after the epochs the real pace affords, and says so; head-only epochs
    (on cached features) stop too once the budget is spent, with no full-model epochs after them."""
    p = planner.plan(data, 0.5, weights=None, candidates=["regnety_200mf"], sizes=(32,),
                     machine=synthetic_machine(speedup=100), verbose=False)
    assert p.epochs >= 5
    left = 0 if budget_spent else p.epochs - 2.0     # seconds of the 30
    p.started = time.perf_counter() - (30 - left)
    model = tiny_regnet()
    slow = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(1.0))
    result = wb.finetune(model, data, epochs=p.epochs, unfreeze=unfreeze, callbacks=[slow, p.guard(reserve=0)],
                         pretrained=False, verbose=0)
    record = p.record(result)
    assert 1 <= result.epochs_run < p.epochs and record["epochs_run"] == result.epochs_run
    assert record["adapted"] and "training stops after epoch" in record["adapted"][0]
    assert len(result.history["loss"]) == result.epochs_run and np.isfinite(result.history["loss"][-1])
