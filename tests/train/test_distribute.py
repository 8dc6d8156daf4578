"""Scale-out and precision: two workers on 127.0.0.1, a lost worker and a restart, XLA, mixed precision."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import slow, tiny_regnet

import workbench as wb
from workbench.data.folders import load_folder
from workbench.train.precision import PRECISIONS, resolve_precision
from workbench.data.sample import sample_dataset

TESTS = Path(__file__).parents[1]  # conftest, hub_mirror, multiworker_job
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _cluster(output_dir, epochs, die_after=None, timeout=300):
    """Run the two workers of tests/multiworker_job.py; return their (returncode, stdout) pairs."""
    ports = _free_ports(2)
    procs = []
    for index in (0, 1):
        args = [sys.executable, str(TESTS / "multiworker_job.py"), str(index), *map(str, ports), str(output_dir),
                str(epochs)] + ([str(die_after)] if die_after is not None and index == 1 else [])
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV))
    deadline = time.time() + timeout
    if die_after is not None:  # the lost worker exits; the chief is stopped too, as a cluster restart does
        procs[1].wait(timeout=timeout)
        try:
            procs[0].wait(timeout=max(1, min(30, deadline - time.time())))
        except subprocess.TimeoutExpired:
            procs[0].kill()
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outs.append((p.returncode, out))
    return outs


def _result(out):
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, out[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


@slow
def test_two_workers_train_as_one_resume_after_a_lost_worker_and_match_one_process(tmp_path):
    # A lost worker after epoch 2 of 3: the job stops; restarted, it resumes from the chief's checkpoint.
    lost = _cluster(tmp_path / "job", epochs=3, die_after=1)
    assert lost[1][0] == 17, lost[1][1][-3000:]
    state = json.loads((tmp_path / "job" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1
    (code0, out0), (code1, out1) = _cluster(tmp_path / "job", epochs=3)
    assert code0 == 0 and code1 == 0, out0[-3000:] + out1[-3000:]
    chief, worker = _result(out0), _result(out1)
    assert chief["chief"] and not worker["chief"]
    assert chief["strategy"] == "MultiWorkerMirroredStrategy, 2 replica(s)"
    assert chief["resumed_at"] == worker["resumed_at"] == 2
    assert chief["history"] == worker["history"]            # one model, synchronised
    assert chief["history"]["loss"][:2] == state["history"]["loss"]
    # Only the chief wrote: the checkpoint folder holds no worker files.
    assert sorted(p.name for p in (tmp_path / "job" / "checkpoints").iterdir()) == [
        "best.keras", "last.keras", "state.json"]

    # The same job in one process with two replicas (the same global batch of 16, 8 per replica).
    single = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import workbench as wb
        from conftest import tiny_regnet
        data = wb.load_folder(wb.sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=32,
                              augment=False, verbose=False)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        r = wb.finetune(tiny_regnet, data, epochs=3, unfreeze="0:head,1:all", strategy=strategy,
                        precision="float32", verbose=0)
        print("RESULT", json.dumps({"history": r.history}))
        """)], capture_output=True, text=True, env=ENV, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    one = _result(single.stdout)["history"]
    print(f"\ntwo workers: loss {chief['history']['loss']}\none process: loss {one['loss']}")
    np.testing.assert_allclose(chief["history"]["loss"], one["loss"], rtol=1e-4)
    np.testing.assert_allclose(chief["history"]["accuracy"], one["accuracy"], atol=1e-6)
    # Validation runs on BatchNorm's moving averages, aggregated over the workers in another order.
    np.testing.assert_allclose(chief["history"]["val_loss"], one["val_loss"], rtol=1e-2)


@slow
def test_xla_compiles_the_train_step_with_native_grouped_convs(tmp_path):
    child = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import workbench as wb
        from conftest import tiny_regnet
        data = wb.load_folder(wb.sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=16,
                              augment=False, verbose=False)
        r = wb.finetune(tiny_regnet(), data, epochs=1, unfreeze="0:all", jit_compile=True, deterministic=False,
                        verbose=0)
        conv = r.model.get_layer("stage2_block1_conv2")
        print("RESULT", r.model.jit_compile, conv.implementation, r.history["loss"][0])
        """)], capture_output=True, text=True, env=ENV, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    jit, implementation, loss = child.stdout.split("RESULT ")[-1].split()
    assert jit == "True" and implementation == "native" and np.isfinite(float(loss))
    assert "Compiled cluster using XLA" in child.stderr


@pytest.fixture(scope="module")
def data():
    return load_folder(sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=32,
                       augment=False, verbose=False)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", pytest.param("mixed_float16", marks=slow)])
def test_mixed_precision_trains_and_returns_a_float32_model(data, precision):
    r = wb.finetune(tiny_regnet(), data, epochs=2, unfreeze="0:head,1:all", precision=precision, verbose=0)
    assert r.precision == precision and np.isfinite(r.history["loss"]).all()
    assert all(layer.compute_dtype == "float32" for layer in r.model.layers)
    assert r.model.output.dtype == "float32"
    loss_scaled = type(r.model.optimizer).__name__ == "LossScaleOptimizer"
    assert loss_scaled == (precision == "mixed_float16")


def test_precision_auto_and_bad_names():
    auto = resolve_precision("auto")
    assert auto in PRECISIONS
    if not tf.config.list_physical_devices("GPU") and not tf.config.list_logical_devices("TPU"):
        assert auto == "float32"  # on a CPU finetune times the model to decide (tests/train/test_precision.py)
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'float32'"):
        resolve_precision("fp8")
    with pytest.raises(ValueError, match="strategy must be one of"):
        wb.make_strategy("horovod")
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        wb.make_strategy("multiworker")
