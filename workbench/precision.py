"""Mixed precision for training: which policy suits this machine, applied to a built model.

`resolve_precision("auto")` picks `mixed_bfloat16` on a TPU, `mixed_float16`
on a GPU with tensor cores (compute capability 7.0 or newer), and on a CPU
`mixed_bfloat16` only where the CPU computes bf16 natively (AVX512-BF16 or
AMX) *and* a quick probe (one RegNet-sized convolution, forward and backward)
measures it faster than float32 here; otherwise `float32`. Without native
bf16 a CPU emulates it and is slower, which is what plain Keras
`mixed_bfloat16` gave on CPUs before.

`training_precision(model, precision)` sets every layer's dtype policy for the
duration of training and puts float32 back afterwards, so the returned model,
its exports and reports keep float32 interfaces. The classifier stays float32
throughout (its softmax and the loss see float32), and variables are float32
in every policy. `mixed_float16` needs a loss scale: `finetune` wraps the
optimizer in `keras.optimizers.LossScaleOptimizer` then.
"""
from __future__ import annotations

import contextlib
import functools
import re
import time
from pathlib import Path

import keras
import numpy as np

from workbench import checks
from workbench.contract import CLASSIFIER

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX-BF16 (Linux: /proc/cpuinfo flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


@functools.cache
def _bf16_faster_on_cpu() -> bool:
    """One 28x28x152 convolution, forward and backward, batch 32: is bf16 faster than float32 here?"""
    import tensorflow as tf

    def seconds(dtype):
        x = tf.random.normal((32, 28, 28, 152), dtype=tf.float32)
        k = tf.Variable(tf.random.normal((3, 3, 152, 152)) * 0.05)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                y = tf.nn.conv2d(tf.cast(x, dtype), tf.cast(k, dtype), 1, "SAME")
                loss = tf.reduce_sum(tf.cast(y, tf.float32))
            return tape.gradient(loss, k)

        step()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step().numpy()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    return seconds(tf.bfloat16) < 0.9 * seconds(tf.float32)


def resolve_precision(precision: str = "auto") -> str:
    """The dtype policy name `precision` means on this machine (see the module docstring for "auto")."""
    checks.one_of("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return "mixed_bfloat16"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "mixed_float16" if tuple(capability) >= (7, 0) else "float32"
    return "mixed_bfloat16" if cpu_has_native_bf16() and _bf16_faster_on_cpu() else "float32"


def set_precision(model: keras.Model, policy: str) -> dict:
    """Every layer of `model` computes in `policy`, except the classifier (float32); returns the old policies."""
    previous = {}
    for layer in model._flatten_layers(include_self=False):
        if layer.name != CLASSIFIER and not isinstance(layer, keras.layers.InputLayer):
            previous[layer] = layer.dtype_policy
            layer.dtype_policy = policy
    return previous


@contextlib.contextmanager
def training_precision(model: keras.Model, precision: str):
    """`model` in `precision`'s policy inside the block, its own policies again after it."""
    if precision == "float32":
        yield
        return
    previous = set_precision(model, precision)
    try:
        yield
    finally:
        for layer, policy in previous.items():
            layer.dtype_policy = policy
