"""finetune: feature caching, resume after a real kill, tf.distribute, bad input."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import keras
import pytest

import workbench as wb
from workbench.data import load_folder
from workbench.finetune import FinetuneResult, default_schedule, finetune
from workbench.sample import sample_dataset

TINY = "wb.RegNetConfig(w0=16, wa=16.0, wm=2.0, depth=8, group_width=8, se_ratio=0.25)"
SETUP = f"""
import keras, workbench as wb
from workbench.data import load_folder
from workbench.finetune import finetune
from workbench.sample import sample_dataset
data = load_folder(sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=32,
                   augment=False, verbose=False)
keras.utils.set_random_seed(0)
model = wb.regnet({TINY}, num_classes=3, input_shape=(32, 32, 3))
"""


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return wb.regnet(wb.RegNetConfig(w0=16, wa=16.0, wm=2.0, depth=8, group_width=8, se_ratio=0.25),
                     num_classes=3, input_shape=(32, 32, 3))


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
    (dict(multipliers={"stage9": 0.1}), "unknown stage"),
    (dict(class_weight="weird"), "class_weight"),
])
def test_bad_input_fails_before_training(data, kwargs, match, tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match=match):
        finetune(model, data, epochs=2, output_dir=tmp_path, verbose=0, **kwargs)
    assert not (tmp_path / "checkpoints" / "last.keras").exists()


def test_cached_head_training_matches_uncached(data):
    """Same seed, same (full-batch) data: the head trained on cached features equals the uncached one."""
    start = tiny_model().get_weights()
    results = {}
    for cache in (True, False):
        model = tiny_model()
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
    model = tiny_model(seed=123)  # other weights: they must come from the checkpoint
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
