"""finetune: feature caching, checkpoints and resume, the NaN guard, class weights, tf.distribute, bad input."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import keras
import pytest
from conftest import slow, tiny_regnet, write_classes

from workbench.models.contract import CLASSIFIER
from workbench.train.finetune import finetune
from workbench.train.result import FinetuneResult
from workbench.data.folders import load_folder
from workbench.data.sample import sample_dataset
from workbench.train.schedule import default_schedule

SETUP = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
import keras, workbench as wb
from conftest import tiny_regnet
from workbench.train.finetune import finetune
from workbench.data.folders import load_folder
from workbench.data.sample import sample_dataset
data = load_folder(sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=32,
                   augment=False, verbose=False)
model = tiny_regnet()
"""


@pytest.fixture(scope="module")
def data():
    return load_folder(sample_dataset(), image_size=32, batch_size=32, seed=0, max_train_images=24,
                       augment=False, verbose=False)


def _run(script, env=None, timeout=400):
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_default_schedule():
    assert default_schedule(9) == {0: ["head"], 3: ["stage4"], 5: ["stage3", "stage2"], 7: ["stage1", "stem"]}
    assert default_schedule(1) == {0: ["head"]}
    assert default_schedule(2) == {0: ["head"], 1: ["stage4", "stage3", "stage2", "stage1", "stem"]}


@pytest.mark.parametrize("kwargs, match", [
    (dict(unfreeze="0:head,1:stage7"), "unknown stage"),
    (dict(unfreeze={-1: "head"}), "negative"),
    (dict(unfreeze="0:head,5:stage4"), "run has 2 epochs"),
    (dict(unfreeze="0;head"), "Malformed"),
    (dict(lr=0.0), "lr must be a positive"),
    (dict(lr=-1e-3), "lr must be a positive"),
    (dict(lr=float("inf")), "lr must be a positive"),
    (dict(lr=True), "lr must be a positive"),
    (dict(lr_decay=0.5), "lr_decay must be a number >= 1"),
    (dict(optimizer="adagrad"), "optimizer must be one of"),
    (dict(multipliers={"stage9": 0.1}), "unknown stage"),
    (dict(class_weight="weird"), "class_weight"),
])
def test_bad_input_fails_before_training(data, kwargs, match, tmp_path):
    model = tiny_regnet()
    with pytest.raises(ValueError, match=match):
        finetune(model, data, epochs=2, output_dir=tmp_path, verbose=0, **kwargs)
    assert not (tmp_path / "checkpoints" / "last.keras").exists()


def test_cached_head_training_matches_uncached(data):
    """Same seed, same (full-batch) data: the head trained on cached features equals the uncached one."""
    start = tiny_regnet().get_weights()
    results = {}
    for cache in (True, False):
        model = tiny_regnet()
        model.set_weights(start)
        r = finetune(model, data, epochs=2, unfreeze="0:head", lr=1e-2, cache_features=cache, verbose=0)
        assert isinstance(r, FinetuneResult) and r.epochs_run == 2
        results[cache] = r
    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        np.testing.assert_allclose(results[True].history[k], results[False].history[k], rtol=1e-4, atol=1e-5)
    a, b = (results[c].model.get_layer("head_fc").get_weights() for c in (True, False))
    for wa, wb_ in zip(a, b):
        np.testing.assert_allclose(wa, wb_, rtol=1e-4, atol=1e-5)
    assert not np.allclose(a[0], start[-2])  # the head did train
    assert results[True].feature_cache_speedup and results[False].feature_cache_speedup is None
    print(f"\nfeature-cache speedup estimate: {results[True].feature_cache_speedup:.1f}x")


def test_resume_after_kill(tmp_path):
    out = tmp_path / "run"
    child = _run(SETUP + f"""
import os
class Die(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            print("killed after epoch", epoch + 1, flush=True)
            os._exit(17)
finetune(model, data, epochs=3, unfreeze="0:head,1:stage4", output_dir={str(out)!r}, callbacks=[Die()],
         verbose=2)
""")
    assert child.returncode == 17, child.stdout[-3000:] + child.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and len(state["history"]["loss"]) == 2
    model = tiny_regnet(seed=123)  # other weights: they must come from the checkpoint
    data = load_folder(sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=32,
                       augment=False, verbose=False)
    r = finetune(model, data, epochs=3, unfreeze="0:head,1:stage4", output_dir=out, verbose=2)
    assert r.resumed_at == 2 and r.epochs_run == 3
    assert len(r.history["loss"]) == len(r.history["val_accuracy"]) == len(r.history["lr"]) == 3
    assert r.history["loss"][:2] == state["history"]["loss"]
    assert [e["epoch"] for e in r.events] == [0, 1]
    assert (out / "checkpoints" / "best.keras").exists()
    assert r.best_epoch is not None and r.best_val_accuracy == max(r.history["val_accuracy"])
    print("\n" + child.stdout[-1500:])


@slow
def test_mirrored_strategy_two_cpus(tmp_path):
    child = _run("""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""" + SETUP + f"""
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
r = finetune(model, data, epochs=2, unfreeze="0:head,1:stage4", strategy=strategy,
             output_dir={str(tmp_path)!r}, verbose=2)
print("REPLICAS", strategy.num_replicas_in_sync, "EPOCHS", r.epochs_run, "EVENTS", r.events)
assert strategy.extended.variable_created_in_scope(r.model.weights[0].value)
""")
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    assert "REPLICAS 2 EPOCHS 2" in child.stdout


def _weights_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    class Diverge(keras.callbacks.Callback):
        """After epoch 1 is checkpointed, the classifier's weights become NaN (as after a blow-up)."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                for v in self.model.get_layer(CLASSIFIER).weights:
                    v.assign(np.full(v.shape, np.nan, "float32"))

    model = tiny_regnet()
    with pytest.raises(FloatingPointError, match=r"epoch 2, batch 1.*last good checkpoint.*after epoch 1"):
        finetune(model, data, epochs=2, unfreeze="0:all", output_dir=tmp_path, callbacks=[Diverge()], verbose=0)
    state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 0 and len(state["history"]["loss"]) == 1
    assert all(np.isfinite(w).all() for w in model.get_weights())
    saved = keras.models.load_model(tmp_path / "checkpoints" / "last.keras")
    assert _weights_equal(model.get_weights(), saved.get_weights())


def test_resume_with_other_settings_is_refused(data, tmp_path):
    finetune(tiny_regnet(), data, epochs=2, unfreeze="0:head", output_dir=tmp_path, verbose=0)
    before = (tmp_path / "checkpoints" / "state.json").read_text()
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.001 there, 0.002 now\).*resume=False"):
        finetune(tiny_regnet(), data, epochs=2, unfreeze="0:head", lr=2e-3, output_dir=tmp_path, verbose=0)
    assert (tmp_path / "checkpoints" / "state.json").read_text() == before
    again = finetune(tiny_regnet(), data, epochs=2, unfreeze="0:head", lr=2e-3, output_dir=tmp_path,
                     resume=False, verbose=0)
    assert again.resumed_at is None and again.epochs_run == 2


def test_restore_best_returns_the_best_epoch(data, tmp_path):
    """Monitored by `lr`, which only falls (no warmup here), the best epoch is the first one."""
    r = finetune(tiny_regnet(), data, epochs=3, unfreeze="0:all", monitor="lr", warmup=0.0,
                 output_dir=tmp_path, verbose=0)
    assert r.best_epoch == 0 and r.best_val_accuracy == max(r.history["lr"])
    best = keras.models.load_model(tmp_path / "checkpoints" / "best.keras").get_weights()
    last = keras.models.load_model(tmp_path / "checkpoints" / "last.keras").get_weights()
    assert not _weights_equal(best, last)
    assert _weights_equal(r.model.get_weights(), best)
    # The finished run again (it resumes after its last epoch), keeping the last epoch's weights.
    kept = finetune(tiny_regnet(), data, epochs=3, unfreeze="0:all", monitor="lr", warmup=0.0,
                    output_dir=tmp_path, restore_best=False, verbose=0)
    assert kept.resumed_at == 3 and _weights_equal(kept.model.get_weights(), last)


def test_balanced_class_weights(tmp_path):
    root = write_classes(tmp_path / "photos", {"many": 18, "few": 6})
    data = load_folder(root, image_size=32, batch_size=8, val_split=0.25, seed=0, augment=False, verbose=False)
    few, many = (data.class_names.index(c) for c in ("few", "many"))
    ratio = data.train_counts["many"] / data.train_counts["few"]
    assert ratio >= 3 and data.class_weights[few] == pytest.approx(ratio * data.class_weights[many])
    runs = {name: finetune(tiny_regnet(2), data, epochs=2, unfreeze="0:head", class_weight=weights, verbose=0)
            for name, weights in (("balanced", "balanced"), ("dict", dict(data.class_weights)), ("none", None))}
    assert runs["balanced"].history == runs["dict"].history
    assert runs["balanced"].history["loss"] != runs["none"].history["loss"]


def _api_run(seed, look_first=False):
    """load_folder -> regnet -> finetune with one seed: augmentation, dropout, cached head epochs, all stages."""
    data = load_folder(sample_dataset(), image_size=32, batch_size=16, seed=seed, max_train_images=48,
                       verbose=False)
    if look_first:  # what show_batch does: it must not change the run
        next(iter(data.train))
    model = tiny_regnet(seed=seed, dropout=0.3)
    return finetune(model, data, epochs=2, unfreeze="0:head,1:all", seed=seed, verbose=0)


@slow
def test_same_seed_same_numbers_other_seed_other_numbers():
    first, again, other = _api_run(0), _api_run(0, look_first=True), _api_run(1)
    print(f"\nseed 0: loss {first.history['loss']}\nseed 0: loss {again.history['loss']}"
          f"\nseed 1: loss {other.history['loss']}")
    assert first.history == again.history
    assert _weights_equal(first.model.get_weights(), again.model.get_weights())
    assert all(a != b for a, b in zip(first.history["loss"], other.history["loss"]))


def test_a_resolved_policy_is_used_as_it_is(data, capsys):
    """finetune(policy=...) runs the policy resolved once (same numbers as its keyword parts), logs once
    through one Say, and refuses the policy's parts beside it."""
    import workbench as wb
    start = tiny_regnet().get_weights()

    def fit(**kwargs):
        model = tiny_regnet()
        model.set_weights(start)
        return finetune(model, data, epochs=2, lr=1e-2, verbose=0, **kwargs)

    policy = wb.training_policy("0:head,1:all", 2, pretrained=True, augment="none")
    given, parts = fit(policy=policy), fit(unfreeze="0:head,1:all", augment="none")
    assert given.history == parts.history and given.policy == parts.policy == policy.as_dict()
    assert given.policy["reason"] == "the schedule given" and given.policy["unfreeze"] == "0:head,1:all"
    assert [e["epoch"] for e in given.events] == [0, 1] and capsys.readouterr().out == ""
    assert any("unfroze head" in line for line in given.log) and any("Epoch 2/2" in line for line in given.log)
    with pytest.raises(ValueError, match="finetune got policy= and also unfreeze, ema"):
        fit(policy=policy, unfreeze="0:all", ema=True)
    with pytest.raises(ValueError, match="policy must be a TrainingPolicy"):
        fit(policy="auto")
