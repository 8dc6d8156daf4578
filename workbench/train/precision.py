"""Mixed precision for training: which policy suits this machine and model, applied to a built model.

`resolve_precision("auto")` picks `mixed_bfloat16` on a TPU, `mixed_float16`
on a GPU with tensor cores (compute capability 7.0 or newer), and `float32`
on every other machine. On a CPU with native bf16 (AVX512-BF16 or AMX) the
answer depends on the model: measured side by side (docs/speed.md,
"Precision"), `mixed_bfloat16` trained RegNetY-200MF at 1.08x and 600MF at
1.55x float32's speed (batch 32, 224 px), while tiny models train slower in
it. So `finetune` decides "auto" there with `choose_precision`: one training
step (forward and backward) of the user's own model, at the run's batch and
image size, timed in both precisions and cached per machine and model shape;
bf16 is chosen only when its step is faster by more than `MARGIN`. A run under
several replicas or workers is not timed (each worker could decide
differently): it trains in float32.

`training_precision(model, precision)` sets every layer's dtype policy for the
duration of training and puts float32 back afterwards, so the returned model,
its exports and reports keep float32 interfaces. The classifier stays float32
throughout (its softmax and the loss see float32), and variables are float32
in every policy. `mixed_float16` needs a loss scale: `finetune` wraps the
optimizer in `keras.optimizers.LossScaleOptimizer` then.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from workbench import models
from workbench.data.pipeline import cache_root
from workbench.models.contract import CLASSIFIER
from workbench.utils import checks
from workbench.utils.runtime import training_graph_optimization

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# "auto" takes bf16 only when a training step is this much faster in it: the rest of an epoch (input
# pipeline, evaluation, callbacks) does not speed up. On a 2-core EPYC with AVX512-BF16 the main job's
# step timed 1.11x faster in bf16 and its epochs took as long (train_seconds 16.4-17.1 s in bf16, 16.8-17.1 s
# in float32), while 200MF / 600MF at 224 px timed 1.23x / 1.50x and trained 1.18x / 1.45x faster.
MARGIN = 0.15


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


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in, why, and the seconds per training step that decided it."""

    precision: str
    reason: str
    seconds: dict = field(default_factory=dict)  # {policy: seconds per step}, when timed

    def as_dict(self) -> dict:
        return asdict(self)


def choose_precision(model: keras.Model, precision: str, batch_size: int, image_size=None,
                     replicas: int = 1) -> PrecisionChoice:
    """`precision` for training `model` on batches of `batch_size`; "auto" decided as the module says."""
    checks.one_of("precision", precision, PRECISIONS)
    if precision != "auto":
        return PrecisionChoice(precision, "asked for")
    resolved = resolve_precision("auto")
    if resolved != "float32":
        return PrecisionChoice(resolved, "the accelerator's native half precision")
    if not cpu_has_native_bf16():
        return PrecisionChoice("float32", "this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 would be emulated")
    if replicas > 1:
        return PrecisionChoice("float32", f"not timed under {replicas} replicas, so that all agree")
    shape = _input_shape(model, batch_size, image_size)
    path = cache_root() / "precision" / f"{_cache_key(model, shape)}.json"
    try:
        seconds, how = json.loads(path.read_text()), "cached"
    except (OSError, ValueError):
        seconds, how = time_precisions(model, shape), "timed"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(seconds))
    bf16 = seconds["mixed_bfloat16"] < (1 - MARGIN) * seconds["float32"]
    ratio = seconds["float32"] / seconds["mixed_bfloat16"]
    return PrecisionChoice("mixed_bfloat16" if bf16 else "float32",
                           f"a training step of this model ({'x'.join(map(str, shape))}) {how}: "
                           f"mixed_bfloat16 {ratio:.2f}x float32's speed", seconds)


def time_precisions(model: keras.Model, shape, repeats: int = 3) -> dict:
    """{policy: median seconds} of one training step (forward, backward) of a clone of `model` on `shape`.

    The clone has the model's layers and trainable flags (not its weights, which do not change the time);
    the two precisions' steps alternate, so a busy machine slows both alike.
    """
    import tensorflow as tf

    clone = keras.models.clone_model(model)
    x = tf.random.uniform(shape, 0, 255, seed=0)
    steps = {}
    with training_graph_optimization():
        for policy in ("float32", "mixed_bfloat16"):
            set_precision(clone, policy)
            steps[policy] = _train_step(clone, x)
            steps[policy]()  # traced under this policy; later calls replay that graph
        times = {policy: [] for policy in steps}
        for _ in range(repeats):
            for policy, step in steps.items():
                start = time.perf_counter()
                step()
                times[policy].append(time.perf_counter() - start)
    return {policy: float(np.median(t)) for policy, t in times.items()}


def _train_step(model, x):
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function(jit_compile=False)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.cast(model(x, training=True), tf.float32)))
        return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in tape.gradient(loss, variables)])

    return lambda: step().numpy()


def _input_shape(model, batch_size, image_size) -> tuple[int, int, int, int]:
    height, width, channels = model.inputs[0].shape[1:]
    return (int(batch_size), int(height or image_size), int(width or image_size), int(channels))


def _cache_key(model, shape) -> str:
    """Machine (CPU, cores, TensorFlow), model (layers, parameters, what trains, input) and the code of the
    workbench's layers (a new version may compute them faster in one precision) in a name."""
    import tensorflow as tf

    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    layers = hashlib.sha1(b"".join(p.read_bytes() for p in sorted(Path(models.__file__).parent.glob("*.py"))))
    signature = [cpu.group(1) if cpu else "", os.cpu_count(), tf.__version__, model.name, len(model.layers),
                 model.count_params(), len(model.trainable_weights), shape, layers.hexdigest()]
    return f"{model.name}-" + hashlib.sha1(json.dumps(signature, default=str).encode()).hexdigest()[:16]
