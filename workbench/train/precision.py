"""Mixed precision for training: which policy suits this machine, applied to a built model.

`resolve_precision("auto")` picks `mixed_bfloat16` on a TPU, `mixed_float16`
on a GPU with tensor cores (compute capability 7.0 or newer), and `float32`
on every CPU. Before BatchNorm took its half-precision path
(`workbench.models.layers.BatchNorm`), `mixed_bfloat16` trained at 0.77x and
inferred at 0.80x float32's speed on a native-bf16 CPU (RegNetY-200MF, batch
32, 224 px); with it, 1.08x / 1.12x (200MF) and 1.55x / 1.36x (600MF), measured
side by side (docs/speed.md, "Precision"). Whether bf16 pays depends on the
model's widths and the CPU, so "auto" stays float32 on CPUs until it measures
the model it runs; ask for `mixed_bfloat16` where `cpu_has_native_bf16()`.

`training_precision(model, precision)` sets every layer's dtype policy for the
duration of training and puts float32 back afterwards, so the returned model,
its exports and reports keep float32 interfaces. The classifier stays float32
throughout (its softmax and the loss see float32), and variables are float32
in every policy. `mixed_float16` needs a loss scale: `finetune` wraps the
optimizer in `keras.optimizers.LossScaleOptimizer` then.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import keras

from workbench.utils import checks
from workbench.models.contract import CLASSIFIER

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX-BF16 (Linux: /proc/cpuinfo flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


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
    return "float32"


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
