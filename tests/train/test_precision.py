"""precision="auto" on a CPU with native bf16: one training step of the model timed in both precisions."""
import json

import numpy as np
import pytest
from conftest import tiny_regnet

import workbench as wb
import workbench.train.precision as precision
from workbench.data.folders import load_folder
from workbench.data.sample import sample_dataset


@pytest.fixture
def native_bf16(monkeypatch, tmp_path):
    """This CPU counts as native bf16 (the timing is real: bf16 is emulated where it is not) and the
    choice cache is empty."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("REGNET_WORKBENCH_CACHE", str(tmp_path))
    return tmp_path


def fake_timer(monkeypatch, steps, first=(1.0, 1.0)):
    """`time_precisions` answering steps {policy: s} and first steps (float32 s, bf16 s); the shapes it was asked."""
    calls = []
    seconds = {policy: {"first": f, "step": steps[policy]} for policy, f in zip(("float32", "mixed_bfloat16"), first)}
    monkeypatch.setattr(precision, "time_precisions", lambda model, shape: calls.append(shape) or dict(seconds))
    return calls


@pytest.mark.parametrize("bf16_seconds, chosen", [(0.5, "mixed_bfloat16"), (0.95, "float32"), (1.3, "float32")])
def test_auto_takes_bf16_only_when_clearly_faster_and_caches_the_timing(native_bf16, monkeypatch, bf16_seconds,
                                                                       chosen):
    calls = fake_timer(monkeypatch, {"float32": 1.0, "mixed_bfloat16": bf16_seconds})
    model = tiny_regnet(size=32)
    first = precision.choose_precision(model, "auto", batch_size=8)
    again = precision.choose_precision(model, "auto", batch_size=8)
    assert first.precision == again.precision == chosen and calls == [(8, 32, 32, 3)]
    assert f"{1 / bf16_seconds:.2f}x" in first.reason and "timed" in first.reason and "cached" in again.reason
    cached, = native_bf16.glob("precision/*.json")
    assert json.loads(cached.read_text())["mixed_bfloat16"] == {"first": 1.0, "step": bf16_seconds}
    assert precision.choose_precision(model, "auto", batch_size=16).precision == chosen and len(calls) == 2


@pytest.mark.parametrize("steps, phases, chosen", [(1000, 1, "mixed_bfloat16"), (70, 1, "float32"),
                                                   (1000, 30, "float32")])
def test_auto_weighs_the_slower_first_steps_of_bf16_against_the_runs_steps(native_bf16, monkeypatch, steps,
                                                                          phases, chosen):
    """bf16 steps 1.25x faster but its first step (its trace) 1.5 s slower: worth it over a long run only, and
    not when every phase traces again. The main job: 70 steps, one phase."""
    fake_timer(monkeypatch, {"float32": 0.1, "mixed_bfloat16": 0.08}, first=(4.0, 5.5))
    choice = precision.choose_precision(tiny_regnet(size=32), "auto", 32, steps=steps, phases=phases)
    assert choice.precision == chosen
    f32, bf16 = 3 * phases * 4.0 + steps * 0.1, 3 * phases * 5.5 + steps * 0.08
    assert f"an estimated {bf16:.0f} s in mixed_bfloat16 against {f32:.0f} s in float32" in choice.reason


def test_a_new_version_of_the_layers_code_is_timed_afresh(native_bf16, monkeypatch, tmp_path):
    calls = fake_timer(monkeypatch, {"float32": 1.0, "mixed_bfloat16": 0.5})
    model = tiny_regnet(size=32)
    precision.choose_precision(model, "auto", batch_size=8)
    code = tmp_path / "models"
    code.mkdir()
    (code / "batchnorm.py").write_text("# a faster BatchNorm\n")
    monkeypatch.setattr(precision.models, "__file__", str(code / "__init__.py"))
    assert "timed" in precision.choose_precision(model, "auto", batch_size=8).reason and len(calls) == 2


def test_auto_is_not_timed_without_native_bf16_nor_under_replicas(native_bf16, monkeypatch):
    calls = fake_timer(monkeypatch, {"float32": 1.0, "mixed_bfloat16": 0.1})
    model = tiny_regnet(size=32)
    assert precision.choose_precision(model, "float32", 8).reason == "asked for"
    assert precision.choose_precision(model, "mixed_bfloat16", 8).precision == "mixed_bfloat16"
    several = precision.choose_precision(model, "auto", 8, replicas=2)
    assert several.precision == "float32" and "2 replicas" in several.reason
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    emulated = precision.choose_precision(model, "auto", 8)
    assert emulated.precision == "float32" and "emulated" in emulated.reason and not calls
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'float32'"):
        precision.choose_precision(model, "bf16", 8)


def test_timing_uses_clones_and_leaves_the_model_as_it_was():
    model = tiny_regnet(size=32)
    before = [w.copy() for w in model.get_weights()]
    seconds = precision.time_precisions(model, (4, 32, 32, 3), repeats=2)
    assert set(seconds) == {"float32", "mixed_bfloat16"}
    assert all(0 < t["step"] < t["first"] < 60 for t in seconds.values())  # the first step traces the graph
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert all(layer.dtype_policy.name == "float32" for layer in model.layers)


def test_finetune_records_what_auto_measured_and_chose(native_bf16, monkeypatch, tmp_path):
    fake_timer(monkeypatch, {"float32": 1.0, "mixed_bfloat16": 0.5})
    data = load_folder(sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=32, augment=False,
                       verbose=False)
    r = wb.finetune(tiny_regnet(size=32), data, epochs=1, verbose=0)
    assert r.precision == r.precision_choice["precision"] == "mixed_bfloat16"
    assert r.precision_choice["seconds"]["mixed_bfloat16"] == {"first": 1.0, "step": 0.5}
    assert any("Precision auto: this model (16x32x32x3 timed" in line and "for 2 steps in 1 phase(s)" in line
               for line in r.log), r.log
    metrics = wb.write_report(r.model, data, r, tmp_path, "tiny")
    assert metrics["precision"] == "mixed_bfloat16" and metrics["precision_choice"]["reason"].startswith("this model")
