"""The process the workbench runs in: TensorFlow with oneDNN on x86 CPUs, quiet, and one seed per run.

oneDNN. TensorFlow's oneDNN kernels (`TF_ENABLE_ONEDNN_OPTS`) are on by
default only on x86 CPUs with AVX512-VNNI, AVX512-BF16 or AMX. The workbench
turns them on for every x86-64 CPU when it imports TensorFlow first (`import
workbench` before `tensorflow` or `keras`) and `TF_ENABLE_ONEDNN_OPTS` is
unset: on an AVX2-only CPU (2 cores, fp32, batch 32, 224 px) RegNetY-200MF
trains at 38.8 img/s with them against 25.0 without, 600MF at 17.5 against
10.7, and grouped convolutions get a native CPU gradient (see
`workbench.models.layers`). `TF_ENABLE_ONEDNN_OPTS=0` before the import keeps
TensorFlow's Eigen kernels.

Quiet logs. On a machine without an NVIDIA driver, TensorFlow's CUDA build
still probes for one and writes lines such as "Could not find cuda drivers"
and "failed call to cuInit ... UNKNOWN ERROR (303)" to the process's stderr,
from C++, while it is imported and when it first lists devices. Those two
moments run with stderr captured; the known probe lines (and oneDNN's notice
that it is on) are dropped and everything else is written back, so real
warnings and errors still show. `TF_CPP_MIN_LOG_LEVEL` is left to the user.
Where a driver exists, nothing is filtered.

Seeds. `seed_everything(seed)` seeds Python, NumPy, TensorFlow and Keras and
(by default) turns on TensorFlow's op determinism; together with seeded
initialization (`wb.regnet(seed=...)`) and loader pipelines whose randomness
depends on their seed only (`ImageData.training`), the same seed gives the
same numbers on the same machine and package versions.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import sys
import tempfile

STARTUP_NOISE = re.compile(
    r"Could not find cuda drivers on your machine|failed call to cuInit|oneDNN custom operations are on|"
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning: Could not find TensorRT")


def gpu_driver_present() -> bool:
    """True where an NVIDIA driver is installed (so CUDA's messages may matter)."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0"))


def drop_startup_noise(text: str) -> str:
    """`text` without TensorFlow's CUDA-probing lines and its oneDNN notice."""
    return "".join(line for line in text.splitlines(keepends=True) if not STARTUP_NOISE.search(line))


@contextlib.contextmanager
def _filtered_stderr():
    """Capture file descriptor 2 (where C++ logs go) and write it back without CUDA-probing lines."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = drop_startup_noise(capture.read().decode(errors="replace"))
            if kept:
                os.write(2, kept.encode())


def import_tensorflow_quietly():
    """`import tensorflow` (oneDNN on for x86-64, unless chosen), without CUDA-probing lines where no driver is."""
    if "tensorflow" not in sys.modules and platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if "tensorflow" in sys.modules or gpu_driver_present() or os.name != "posix":
        import tensorflow
        _quiet_device_probe()
        return tensorflow
    with _filtered_stderr():
        import tensorflow
    _quiet_device_probe()
    return tensorflow


def _quiet_device_probe():
    """Filter stderr during TensorFlow's first device listing (where cuInit is called), then step aside."""
    if gpu_driver_present() or os.name != "posix":
        return
    from tensorflow.python.eager import context

    original = context.Context._initialize_physical_devices
    if getattr(original, "_workbench_quiet", False) or context.context()._physical_devices is not None:
        return

    def initialize(self, *args, **kwargs):
        with _filtered_stderr():
            result = original(self, *args, **kwargs)
        context.Context._initialize_physical_devices = original
        return result

    initialize._workbench_quiet = True
    context.Context._initialize_physical_devices = initialize


def accelerator_present() -> bool:
    """True when TensorFlow sees a GPU or TPU."""
    import tensorflow as tf

    return any(d.device_type in ("GPU", "TPU") for d in tf.config.list_logical_devices())


@functools.cache
def cpu_grouped_conv_gradients(dtype: str = "float32") -> bool:
    """True when this process's CPU kernels differentiate a grouped `tf.nn.conv2d` in `dtype`.

    oneDNN does (float32 everywhere, bfloat16 and float16 only with AVX-512),
    Eigen does not. Tried once per dtype on a tiny grouped convolution, not
    inferred from flags: where it fails, `GroupConv2D` computes grouped
    convolutions from dense ones.
    """
    import tensorflow as tf

    @tf.function(autograph=False)
    def grads(x, kernel, dy):  # the two ops autodiff emits for a grouped conv (no tape: see below)
        strides = [1, 1, 1, 1]
        return (tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
                                               strides=strides, padding="SAME"),
                tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
                                                strides=strides, padding="SAME"))

    try:
        # init_scope: run now, even when asked while Keras builds a graph (it also pauses gradient tapes).
        with tf.init_scope(), tf.device("/CPU:0"):
            if not tf.executing_eagerly():  # a TF1 graph: keep the form that runs everywhere
                return False
            grads(tf.ones((1, 4, 4, 4), dtype), tf.ones((3, 3, 2, 4), dtype), tf.ones((1, 4, 4, 4), dtype))
    except (tf.errors.OpError, ValueError, NotImplementedError):
        return False
    return True


@contextlib.contextmanager
def training_graph_optimization():
    """Where only a CPU trains, skip Grappler's graph optimisation for the functions made inside.

    Measured on RegNetY-200MF, 224 px, batch 32, 2 cores: Grappler spends
    ~1.3 s optimising a training step (each unfreeze makes a new one) and the
    step runs no faster for it (1.10 s either way), while inference does gain
    from it (conv + BatchNorm folding), so it is off only while training runs.
    The setting is global to TensorFlow and restored on exit (a function made
    inside and called again outside is optimised then, once). On a GPU or TPU
    (layout and fusion passes matter there) nothing changes.
    """
    import tensorflow as tf

    if accelerator_present():
        yield
        return
    previous = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": previous})


def seed_everything(seed: int, deterministic: bool = True):
    """Seed Python, NumPy, TensorFlow and Keras; with `deterministic`, TensorFlow op determinism too.

    Op determinism is a process-wide TensorFlow setting: once on, it stays on
    for the process (False does not turn it off).
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
