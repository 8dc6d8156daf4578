"""Mixed precision for training: which policy suits this machine and model, applied to a built model.

`resolve_precision("auto")` picks `mixed_bfloat16` on a TPU, `mixed_float16`
on a GPU with tensor cores (compute capability 7.0 or newer), and `float32`
on every other machine. On a CPU with native bf16 (AVX512-BF16 or AMX) the
answer depends on the model and the run (docs/speed.md, "Precision"): a
RegNetY-600MF step at 224 px ran 1.6x faster in bf16 and a 200MF step 1.3-1.4x,
but bf16's first steps also cost more (its graph is larger to trace), which a
short run does not earn back (the main job, 70 steps at 128 px: 18 s of
training in bf16 against 15 s in float32). So
`finetune` decides "auto" there with `choose_precision`: a clone of the user's
model takes its first training step (trace included) and then a few more in
each precision, at the run's batch and image size, timed and cached per
machine, model shape and version of the workbench's layers; bf16 is chosen when
the run's estimated training time, `TRACES` first steps per unfreeze phase plus
its steps at the timed rate, is shorter in bf16 by more than `MARGIN`. A run
under several replicas or workers is not timed (each worker could decide
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
# Per unfreeze phase a run traces its training step, the BatchNorm re-estimation and the evaluation; each
# costs about one first step. "auto" takes bf16 when the run's estimate is this much shorter in it: the
# input pipeline and callbacks do not speed up. Measured on a 2-core EPYC with AVX512-BF16, RegNetY-200MF,
# batch 32: the main job (128 px, 70 steps, one phase) trained 15.1-15.7 s in float32 and 18.1-18.7 s in
# bf16 (a 1-epoch finetune: 4.7 against 8.1 s); its timing (bf16 first) gave steps of 0.101 / 0.087 s and
# first steps of 1.0 / 1.7 s, so estimates of 10.1 / 11.2 s: float32. At 224 px, 35 steps trained 17.8 s in
# float32 and 20.1 s in bf16 (estimates 13.0 / 11.9 s: float32, within MARGIN); at 224 px the steps ran
# 1.33x faster in bf16 in the run (0.45 against 0.375 s), so a run of a few hundred steps gains.
TRACES = 3
MARGIN = 0.10


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
    """The precision a run trains in, why, and the timing that decided it."""

    precision: str
    reason: str
    seconds: dict = field(default_factory=dict)  # {policy: {"first": s, "step": s}}, when timed

    def as_dict(self) -> dict:
        return asdict(self)


def choose_precision(model: keras.Model, precision: str, batch_size: int, image_size=None,
                     replicas: int = 1, steps: int | None = None, phases: int = 1) -> PrecisionChoice:
    """`precision` for training `model` on batches of `batch_size` for `steps` steps (None: many) in
    `phases` unfreeze phases; "auto" decided as the module says."""
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
        seconds, how = _cached(path), "cached"
    except (OSError, ValueError):
        seconds, how = time_precisions(model, shape), "timed"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(seconds))
    f32, bf16 = seconds["float32"], seconds["mixed_bfloat16"]
    timed = (f"{'x'.join(map(str, shape))} {how}: a step in mixed_bfloat16 {f32['step'] / bf16['step']:.2f}x "
             f"float32's speed, a first step {bf16['first']:.1f} s against {f32['first']:.1f} s")
    if steps is None:
        faster = bf16["step"] < (1 - MARGIN) * f32["step"]
        return PrecisionChoice("mixed_bfloat16" if faster else "float32", f"this model ({timed})", seconds)
    estimate = {p: TRACES * phases * t["first"] + steps * t["step"] for p, t in seconds.items()}
    faster = estimate["mixed_bfloat16"] < (1 - MARGIN) * estimate["float32"]
    return PrecisionChoice("mixed_bfloat16" if faster else "float32",
                           f"this model ({timed}); for {steps} steps in {phases} phase(s) an estimated "
                           f"{estimate['mixed_bfloat16']:.0f} s in mixed_bfloat16 against "
                           f"{estimate['float32']:.0f} s in float32", seconds)


def time_precisions(model: keras.Model, shape, repeats: int = 3) -> dict:
    """{policy: {"first": s, "step": median s}}: the first training step (trace included) and the next ones
    of a clone of `model` per precision, on random images of `shape` against a mean-squared-error loss.

    The clones have the model's layers and trainable flags (not its weights, which do not change the time);
    the precisions' steps alternate, so a busy machine slows both alike.
    """
    import tensorflow as tf

    x = tf.random.uniform(shape, 0, 255, seed=0)
    y = np.zeros((shape[0], *model.output_shape[1:]), "float32")
    clones, first = {}, {}
    with training_graph_optimization():
        for policy in ("mixed_bfloat16", "float32"):  # bf16 pays the process's one-time costs: leans to float32
            clone = clones[policy] = keras.models.clone_model(model)
            set_precision(clone, policy)
            clone.compile(keras.optimizers.SGD(0.01), "mse")
            start = time.perf_counter()
            clone.train_on_batch(x, y)
            first[policy] = time.perf_counter() - start
        times = {policy: [] for policy in clones}
        for _ in range(repeats):
            for policy, clone in clones.items():
                start = time.perf_counter()
                clone.train_on_batch(x, y)
                times[policy].append(time.perf_counter() - start)
    return {policy: {"first": first[policy], "step": float(np.median(t))} for policy, t in times.items()}


def _cached(path: Path) -> dict:
    """The timing cached at `path`; ValueError where it is not one of `time_precisions`."""
    seconds = json.loads(path.read_text())
    if not all(isinstance(seconds.get(p), dict) and {"first", "step"} <= set(seconds[p])
               for p in ("float32", "mixed_bfloat16")):
        raise ValueError(f"{path} is not a timing of both precisions")
    return seconds


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
