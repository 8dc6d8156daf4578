"""This machine, measured: timed probes of two small RegNets, the fitted `Machine` and its cached profile.

`measure` times training and inference steps of RegNetY-200MF and 600MF at two
image sizes, compiled as `finetune` compiles them, and the seconds to build,
trace and checkpoint them (~30-60 s, once per machine, precision and
TensorFlow version); `fit` turns the points into per-image, per-block and
per-parameter costs. Figures: docs/budget.md.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from workbench.models.design import complexity, get_config
from workbench.utils.say import Say

PROBES = (("regnety_200mf", (96, 160)), ("regnety_600mf", (96, 160)))
PROBE_BATCH = 32  # the recipes' batch: a step costs ~60 ms besides its images here, so per-image costs depend on it


@dataclass
class Machine:
    """Fitted costs of this machine (seconds); `points` are the measurements they come from.

    Seconds per training or inference image = a x activations + b x multiply-adds + c (activations
    predict runtime better than flops: Dollár et al. 2021); build and trace seconds per block,
    checkpoint seconds per parameter.
    """

    train_per_act: float
    train_per_flop: float
    train_per_image: float
    infer_per_act: float
    infer_per_flop: float
    infer_per_image: float
    build_per_block: float
    trace_per_block: float
    predict_trace_per_block: float
    save_per_param: float
    precision: str
    key: str
    seconds: float  # what measuring took
    points: list = field(default_factory=list)

    def train_image(self, cx) -> float:
        return self.train_per_act * cx["acts"] + self.train_per_flop * cx["flops"] + self.train_per_image

    def infer_image(self, cx) -> float:
        return self.infer_per_act * cx["acts"] + self.infer_per_flop * cx["flops"] + self.infer_per_image


def machine_key(precision: str) -> str:
    """The profile's name: CPU, cores, GPUs, TensorFlow version, convolution kernels and precision."""
    import tensorflow as tf

    from workbench.utils.runtime import cpu_grouped_conv_gradients
    kernels = "onednn" if cpu_grouped_conv_gradients() else "eigen"  # 1.6x apart in training (runtime.py)
    return (f"{platform.machine()}-{platform.processor() or 'cpu'}-{os.cpu_count()}cores-"
            f"{len(tf.config.list_physical_devices('GPU'))}gpu-tf{tf.__version__}-{kernels}-{precision}"
            ).replace(" ", "_")


def profile_path(key: str) -> Path:
    """Where the profile named `key` is cached."""
    from workbench.data.pipeline import cache_root
    return cache_root() / "planner" / f"{key}.json"


def blocks(variant) -> int:
    """The number of blocks of `variant` (building and tracing grow with it)."""
    cfg = get_config(variant)
    if hasattr(cfg, "stages"):
        return sum(st["depth"] for st in cfg.stages())
    return len(cfg.blocks())


def _wall(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _probe(variant, sizes, batch, precision, say) -> list[dict]:
    """Build `variant` once (any input size), compile it as `finetune` does, and time it at each size:
    the first training step (the trace), steady steps, inference, a checkpoint."""
    from workbench.models.contract import trainable_candidates
    from workbench.models.regnet import regnet
    from workbench.train.discriminative import DiscriminativeOptimizer
    from workbench.train.finetune import make_optimizer
    from workbench.train.precision import training_precision
    from workbench.utils.runtime import training_graph_optimization

    out = []
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    model = regnet(variant, num_classes=10, input_shape=(None, None, 3))
    build = time.perf_counter() - start
    opt = DiscriminativeOptimizer(make_optimizer("adamw", 1e-3, 0.05), model, decay=1.0)
    model.compile(optimizer=opt, loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                  metrics=["accuracy"], jit_compile="auto")
    opt.build(trainable_candidates(model))
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, batch)]
    trace = 0.0
    for size in sizes:
        x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
        with training_graph_optimization(), training_precision(model, precision):
            first = _wall(lambda: model.train_on_batch(x, y))
            train = float(np.median([_wall(lambda: model.train_on_batch(x, y)) for _ in range(5)]))
        predict_first = _wall(lambda: model.predict_on_batch(x))
        infer = float(np.median([_wall(lambda: model.predict_on_batch(x)) for _ in range(5)]))
        trace = trace if out else max(first - train, 0.0)  # a fresh model's first trace (later sizes retrace)
        out.append(dict(variant=variant, size=size, batch=batch, build=build, trace=trace,
                        train=train / batch, predict_trace=max(predict_first - infer, 0.0), infer=infer / batch,
                        params=model.count_params(), blocks=blocks(variant)))
        say(f"  {variant} at {size} px: train {batch / train:.1f} img/s, inference {batch / infer:.1f} img/s, "
            f"first step {first:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        save = _wall(lambda: model.save(Path(tmp) / "m.keras"))
    say(f"  {variant}: built in {build:.1f} s, checkpoint {save:.2f} s")
    for point in out:
        point["save"] = save
    keras.backend.clear_session()
    return out


def _nonnegative_fit(rows, target) -> tuple[float, ...]:
    """Least squares target ~ rows @ coef with coef >= 0, on relative errors (small and large models alike)."""
    from scipy.optimize import nnls
    rows, target = np.asarray(rows, float), np.asarray(target, float)
    scale = rows.max(axis=0)
    coef, _ = nnls(rows / scale / target[:, None], np.ones_like(target))
    return tuple(float(c) for c in coef / scale)


def fit(points, precision, key, seconds) -> Machine:
    """The `Machine` cost model fitted to measured points."""
    cxs = [complexity(p["variant"], p["size"], 10) for p in points]
    rows = [[cx["acts"], cx["flops"], 1.0] for cx in cxs]
    train = _nonnegative_fit(rows, [p["train"] for p in points])
    infer = _nonnegative_fit(rows, [p["infer"] for p in points])
    per_block = {k: float(np.mean([p[k] / p["blocks"] for p in points]))
                 for k in ("build", "trace", "predict_trace")}
    return Machine(*train, *infer, per_block["build"], per_block["trace"], per_block["predict_trace"],
                   float(np.mean([p["save"] / p["params"] for p in points])), precision, key, seconds, list(points))


def measure(precision: str = "float32", remeasure: bool = False, verbose: bool = True,
            probes=PROBES, batch: int = PROBE_BATCH) -> Machine:
    """This machine's `Machine` cost model: measured (~30-60 s), or read from the cache when measured before."""
    say = Say(verbose)
    key = machine_key(precision)
    path = profile_path(key)
    if path.exists() and not remeasure:
        machine = Machine(**json.loads(path.read_text()))
        say(f"Machine profile from {path} (measured in {machine.seconds:.0f} s; remeasure=True to redo).")
        return machine
    say(f"Measuring this machine ({precision}, batch {batch}):")
    start = time.perf_counter()
    points = [p for variant, sizes in probes for p in _probe(variant, sizes, batch, precision, say)]
    machine = fit(points, precision, key, time.perf_counter() - start)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(machine), indent=1))
    say(f"Measured in {machine.seconds:.0f} s.")
    return machine
