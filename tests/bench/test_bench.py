"""The benchmarks' plumbing: a fresh process per contender ("_tuned": glibc keeps freed memory), the ops profile."""
import platform

import pytest
from conftest import slow

from workbench.bench import KEEP_FREED_MEMORY, run_in_process, split_tuned

# Writes a fresh 64 MiB block, frees it, and counts the page faults of writing a second one.
PROBE = '''
import json, resource
import numpy as np

def fresh_block_faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(2**23)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

fresh_block_faults()
print(json.dumps({"faults": fresh_block_faults()}))
'''


def test_split_tuned_adds_to_the_users_glibc_tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert split_tuned("timm") == ("timm", {})
    assert split_tuned("timm_bf16_tuned") == (
        "timm_bf16", {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{KEEP_FREED_MEMORY}"})
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert split_tuned("timm_tuned")[1] == {"GLIBC_TUNABLES": KEEP_FREED_MEMORY}


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc tunables")
def test_a_tuned_process_reuses_freed_memory_without_page_faults(tmp_path, monkeypatch):
    (tmp_path / "fault_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    plain, why = run_in_process("fault_probe", [])
    assert why is None
    tuned, why = run_in_process("fault_probe", [], split_tuned("timm_tuned")[1])
    assert why is None
    assert plain["faults"] >= 32  # glibc gave the block back: 64 MiB faults again (2 MiB pages at most)
    assert tuned["faults"] < plain["faults"] / 8


def test_a_process_that_fails_says_why(tmp_path, monkeypatch):
    (tmp_path / "broken_probe.py").write_text("raise SystemExit('no figures today')\n")
    (tmp_path / "missing_probe.py").write_text("import a_framework_not_installed_here\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert run_in_process("broken_probe", []) == (None, "no figures today")
    assert run_in_process("missing_probe", []) == (None, "not installed")


@slow
def test_the_ops_profile_times_the_convolutions_of_a_train_step_and_an_inference_pass():
    from workbench.bench.ops import workbench_ops

    result = workbench_ops("regnety_200mf", batch=4, size=64, top=5)
    for step in ("train", "infer"):
        r = result[step]
        assert r["wall"] > 0 and r["total"] > 0 and len(r["ops"]) == 5
        assert [s for _, s, _ in r["ops"]] == sorted((s for _, s, _ in r["ops"]), reverse=True)
        assert any("Conv2D" in op and seconds > 0 and calls > 0 for op, seconds, calls in r["ops"]), r["ops"]
    assert any("Backprop" in op for op, _, _ in result["train"]["ops"])


@slow
def test_the_ops_profile_infers_bf16_with_batchnorm_folded_into_the_convolutions():
    from workbench.bench.ops import workbench_ops

    result = workbench_ops("regnety_200mf", batch=4, size=64, top=50, precision="mixed_bfloat16")

    def batchnorm_calls(step):
        return sum(calls for op, _, calls in result[step]["ops"] if "FusedBatchNorm" in op)

    assert batchnorm_calls("train") >= 44  # training normalizes every BatchNorm by batch statistics
    assert batchnorm_calls("infer") <= 1  # inference: the 44 inside the convolutions; the stem normalization may remain


@slow
def test_the_report_cost_benchmark_times_the_tensorboard_callback_and_the_grad_cam():
    from workbench.bench.report_cost import measure

    r = measure(epochs=2, image_size=32, max_train_images=48, repeats=1)
    assert r["epochs"] == 2 and r["tensorboard_calls"] >= 2 * 4  # per epoch at least: begin, end, test begin, end
    assert 0 < r["tensorboard_seconds"] < r["finetune_seconds"]
    assert r["tensorboard_share"] == pytest.approx(r["tensorboard_seconds"] / r["finetune_seconds"], abs=1e-3)
    assert r["top_losses_seconds"] > 0 and r["top_losses_gradcam_seconds"] > 0


def test_the_batchnorm_benchmark_times_every_form_and_names_the_shapes_it_knows(capsys):
    from workbench.bench.batchnorm import FORMS, main, measure

    ms = measure(8, 24, batch=2)
    assert list(ms) == list(FORMS) and all(v > 0 for v in ms.values())
    with pytest.raises(SystemExit):
        main(["--shapes", "200MF,800MF"])
    assert "unknown shapes ['800MF']; choose from 200MF, 600MF" in capsys.readouterr().err
