"""Learning-rate schedules: values at the key steps, serialization, use inside compiled fit."""

import math

import keras
import numpy as np
import pytest

from workbench.train.lr_schedules import OneCycle, WarmupCosine


def values(schedule, steps):
    return np.asarray(schedule(np.asarray(steps)), dtype="float64")


def test_warmup_cosine_key_steps():
    s = WarmupCosine(1e-3, total_steps=100, warmup_steps=10, final_lr_frac=0.1)
    lr = values(s, [0, 5, 10, 55, 100, 500])
    np.testing.assert_allclose(lr, [0.0, 5e-4, 1e-3, 0.55e-3, 1e-4, 1e-4], rtol=1e-5, atol=1e-9)
    assert np.all(np.diff(values(s, np.arange(0, 11))) > 0)  # warmup rises
    assert np.all(np.diff(values(s, np.arange(10, 101))) < 0)  # cosine falls
    assert float(s(7)) == pytest.approx(7e-4, rel=1e-5)  # a plain int step works too


def test_warmup_cosine_without_warmup_starts_at_peak():
    s = WarmupCosine(0.1, total_steps=10)
    np.testing.assert_allclose(values(s, [0, 5, 10]), [0.1, 0.05, 0.0], atol=1e-7)


def test_one_cycle_key_steps():
    s = OneCycle(1e-2, total_steps=100, pct_start=0.25, div_factor=25.0, final_div_factor=1e4)
    lr = values(s, np.arange(120))
    assert lr[0] == pytest.approx(1e-2 / 25, rel=1e-5)
    assert int(np.argmax(lr)) == 24 and lr[24] == pytest.approx(1e-2, rel=1e-5)  # PyTorch: 0.25*100 - 1
    assert lr[99] == pytest.approx(1e-2 / 25 / 1e4, rel=1e-4)
    assert lr[119] == pytest.approx(lr[99])
    assert np.all(np.diff(lr[:25]) > 0) and np.all(np.diff(lr[24:100]) < 0)


@pytest.mark.parametrize("make, message", [
    (lambda: WarmupCosine(0.0, 100), "peak_lr"),
    (lambda: WarmupCosine(1e-3, 0), "total_steps"),
    (lambda: WarmupCosine(1e-3, 10, warmup_steps=10), "warmup_steps"),
    (lambda: WarmupCosine(1e-3, 10, warmup_steps=-1), "warmup_steps"),
    (lambda: WarmupCosine(1e-3, 10, final_lr_frac=1.5), "final_lr_frac"),
    (lambda: WarmupCosine(1e-3, 10.5), "total_steps"),
    (lambda: OneCycle(-1.0, 100), "max_lr"),
    (lambda: OneCycle(1e-2, 1), "total_steps"),
    (lambda: OneCycle(1e-2, 100, pct_start=1.0), "pct_start"),
    (lambda: OneCycle(1e-2, 100, div_factor=0), "div_factor"),
    (lambda: OneCycle(1e-2, 100, final_div_factor=math.inf), "final_div_factor"),
])
def test_bad_arguments_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("schedule", [WarmupCosine(2e-3, 50, 5, 0.05), OneCycle(3e-2, 40, 0.3)])
def test_config_round_trip(schedule):
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert type(again) is type(schedule) and again.get_config() == schedule.get_config()
    np.testing.assert_allclose(values(again, np.arange(60)), values(schedule, np.arange(60)))


def test_fit_with_xla_and_save_load(tmp_path):
    """Inside AdamW in compiled (XLA) fit, then through model.save / load_model with no custom_objects."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    schedule = OneCycle(0.05, total_steps=16)
    model.compile(optimizer=keras.optimizers.AdamW(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=True)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert int(model.optimizer.iterations) == 16
    assert float(model.optimizer.learning_rate) == pytest.approx(float(schedule(16)), rel=1e-5)

    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    lr = loaded.optimizer._learning_rate
    assert isinstance(lr, OneCycle) and lr.get_config() == schedule.get_config()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert int(loaded.optimizer.iterations) == 16  # resumes where the schedule left off
    assert float(loaded.optimizer.learning_rate) == pytest.approx(float(schedule(16)), rel=1e-5)
