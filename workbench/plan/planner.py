"""`wb.plan`: the most accurate RegNet fine-tune that fits a time budget on this machine.

Three parts, each printed with the plan:

1. The machine, measured (`measure`, ~30-60 s once per machine, precision and
   TensorFlow version; kept in the cache): timed training and inference steps
   of RegNetY-200MF and 600MF at two image sizes, compiled as `finetune`
   compiles them, and the seconds to build, trace and checkpoint them.
2. A cost model fitted to those points (`Machine`). Seconds per training or
   inference image = a x activations + b x multiply-adds + c: activations (the
   output elements of every convolution) predict runtime better than flops
   (Dollár et al. 2021, "Fast and Accurate Model Scaling"), and both grow with
   the image side squared, so every variant's cost at every size follows from
   `design.complexity`. Building and tracing grow with the number of blocks,
   checkpoints with the parameters. While only the head trains, an epoch
   costs the head alone on backbone features computed once (`feature_cache`),
   so a linear probe costs one inference pass.
3. The expected accuracy of each candidate (`Candidate.score`, top-1 points,
   used to rank them): the prior, the ImageNet top-1 of its weights (transfer
   accuracy tracks ImageNet accuracy: Kornblith et al. 2019, "Do Better
   ImageNet Models Transfer Better?"), or 0 from random initialization, where
   ImageNet accuracy says nothing; minus what a side below the reference costs
   (RESOLUTION_POINTS; the reference is the weights' training size, or from
   random initialization the images' own size, since upsampling adds nothing
   to learn from); minus the under-training deficit UNDERTRAINED x exp(-epochs / tau),
   whose tau grows as the data shrinks (fewer steps per epoch); a linear probe
   also loses LINEAR_PROBE_POINTS. Constants and the measurements behind them
   are next to their definitions.

The chosen plan maximises the score within the budget (minutes minus the time
spent measuring, less a margin); `Plan.table()` shows its phases with predicted
seconds and the runners-up with their scores. `Plan.guard()` is the callback
that keeps a run inside the budget: when epochs run slower than planned (a
busier machine), it cuts the remaining epochs and says so.
"""
from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from workbench.utils import checks

from workbench.models import published as pretrained
from workbench.train.bn_refresh import MAX_IMAGES as BN_MAX_IMAGES
from workbench.data.pipeline import steps_per_epoch
from workbench.models.design import PUBLISHED, complexity, get_config, resolve_variant

# Every RegNetX and RegNetY with published ImageNet weights (the paper's sizes and timm's torchvision-shaped
# ones): the families the probes measure. RegNetZ (depthwise-heavy, costlier per multiply-add on a CPU) is
# planned only when named in `candidates`.
CANDIDATES = tuple(v for v in PUBLISHED if v.startswith(("regnetx_", "regnety_")))
PROBES = (("regnety_200mf", (96, 160)), ("regnety_600mf", (96, 160)))
PROBE_BATCH = 32  # the recipes' batch: a step costs ~60 ms besides its images here, so per-image costs depend on it
SIZES = (64, 96, 128, 160, 192, 224, 256, 288, 320, 384)
MAX_EPOCHS = 30
MARGIN = 0.92  # plan to 92% of the budget: the cost model's errors measured -8% to +16% (README, A time budget)

# Top-1 points lost at an image side h halvings below the reference size: RESOLUTION_POINTS[0] * h +
# RESOLUTION_POINTS[1] * h**2, faster at low resolution. FixRes (Touvron et al. 2019, Table 1): ResNet-50
# trained at 224 px scores 77.0 at 224 and 73.3 at 128 (h = 0.81: 3.7 points); ImageNet at 64 px
# (Chrabaszcz et al. 2017): the best wide ResNet reaches 67.7 top-1 (32.3% error), ~10 below comparable
# models at 224 (h = 1.81: this model says 12.0).
RESOLUTION_POINTS = (3.0, 2.0)
# The head alone on a frozen backbone, against full fine-tuning, in the transfer benchmark
# (`workbench.train.policy`): 0.06-0.28 lower on five tasks, 0.19 on average.
LINEAR_PROBE_POINTS = 19.0
# Under-training: score deficit = UNDERTRAINED[pretrained] * exp(-epochs / tau), with
# tau = TAU_EPOCHS[pretrained] * sqrt(REFERENCE_IMAGES / training images), at least 1 epoch. Fitted (least
# squares, one asymptote per task) to the transfer benchmark's epochs sweep (`python -m
# workbench.bench.transfer --tasks digits@5,digits@30,digits@100,textures@30 --policies full,scratch
# --epochs 3,6,24`, with its 12-epoch runs): validation accuracy at 3 / 6 / 12 / 24 epochs
#     pretrained:  digits@5 (25 images) .480 .504 .600 .648   digits@30 (150) .772 .836 .840 .868
#                  digits@100 (500)     .944 .964 .964 .964   textures@30 (90) .700 .808 .792 .775
#     scratch:     digits@5 .184 .196 .304 .616   digits@30 .200 .200 .736 .768
#                  digits@100 .796 .908 .928 .956   textures@30 .333 .333 .342 .600
# pretrained: 29 points, tau 1.2 epochs at 500 images (rms error 0.017; a tau that ignores the number of
# images fits worse, 0.028); scratch: 65 points, tau 4.3 (rms 0.098: from scratch accuracy stays at chance
# for a while, then rises, which this curve only approximates).
UNDERTRAINED = {True: 29.0, False: 65.0}
TAU_EPOCHS = {True: 1.2, False: 4.3}
REFERENCE_IMAGES = 500


def tau(pretrained_weights: bool, num_train: int) -> float:
    """Epochs of the under-training curve's time constant: longer from scratch and on small data."""
    return max(1.0, TAU_EPOCHS[pretrained_weights] * math.sqrt(REFERENCE_IMAGES / max(num_train, 1)))


# ---------------------------------------------------------------- the machine

@dataclass
class Machine:
    """Fitted costs of this machine (seconds); `points` are the measurements they come from."""

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
    import os

    import tensorflow as tf

    from workbench.utils.runtime import cpu_grouped_conv_gradients
    kernels = "onednn" if cpu_grouped_conv_gradients() else "eigen"  # 1.6x apart in training (runtime.py)
    return (f"{platform.machine()}-{platform.processor() or 'cpu'}-{os.cpu_count()}cores-"
            f"{len(tf.config.list_physical_devices('GPU'))}gpu-tf{tf.__version__}-{kernels}-{precision}"
            ).replace(" ", "_")


def _profile_path(key: str) -> Path:
    from workbench.data.pipeline import cache_root
    return cache_root() / "planner" / f"{key}.json"


def _blocks(variant) -> int:
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
    from workbench.train.finetune import make_optimizer
    from workbench.models.regnet import regnet
    from workbench.train.discriminative import DiscriminativeOptimizer
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
                        params=model.count_params(), blocks=_blocks(variant)))
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
    """The cost model of `Machine` from measured points (see the module docstring)."""
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
    say = print if verbose else (lambda *a, **k: None)
    key = machine_key(precision)
    path = _profile_path(key)
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


# ---------------------------------------------------------------- candidates

@dataclass
class Candidate:
    """One way to spend the budget: what it trains, its predicted phases (seconds) and its score."""

    variant: str
    weights: str | None
    image_size: int
    batch_size: int
    epochs: int
    unfreeze: str
    phases: dict
    prior: float
    resolution: float
    undertrained: float
    probe_cost: float
    reason: str = ""

    @property
    def seconds(self) -> float:
        return float(sum(self.phases.values()))

    @property
    def score(self) -> float:
        return self.prior - self.resolution - self.undertrained - self.probe_cost

    def row(self) -> str:
        what = "linear probe" if self.unfreeze == "0:head" else "fine-tune"
        return (f"{self.variant:<16} {str(self.weights or 'none'):<16} {self.image_size:>4} {self.epochs:>3} "
                f"{what:<12} {self.prior:>6.1f} {-self.resolution:>6.1f} {-self.undertrained:>6.1f} "
                f"{-self.probe_cost:>6.1f} {self.score:>6.1f} {self.seconds / 60:>6.1f}")


HEADER = (f"{'variant':<16} {'weights':<16} {'px':>4} {'ep':>3} {'training':<12} {'prior':>6} {'res':>6} "
          f"{'epochs':>6} {'probe':>6} {'score':>6} {'min':>6}")

# Estimates of small parts, not measured by the probes: the report's figures and files (~3-5 s here beside
# its inference), a head-only epoch on cached features (Keras' per-epoch work), and BatchNorm
# re-estimation's forward passes in training mode (batch statistics) against inference.
REPORT_SECONDS = 4.0
HEAD_EPOCH_SECONDS = 0.2
BN_FORWARD = 1.5


def _phases(machine: Machine, variant, size, epochs, probe, n_train, n_val, batch, scratch, num_classes,
            decode=0.0, reload=False):
    """Predicted seconds of each phase of a run (data at the plan's size to report); `decode`: seconds
    to decode one image (data is checked when reloaded, and decoded into the cache in the first epoch)."""
    cx = complexity(variant, size, num_classes)
    blocks, params = _blocks(variant), cx["params"] + cx["bn_stats"]
    train, infer = machine.train_image(cx), machine.infer_image(cx)
    steps = steps_per_epoch(n_train, batch)
    save = machine.save_per_param * params  # a checkpoint (with the optimizer state, as the probes saved it)
    phases = {"setup": (n_train + n_val) * decode if reload else 0.0, "build": machine.build_per_block * blocks}
    if probe:
        phases["features"] = (n_train + n_val) * (infer + decode) + machine.predict_trace_per_block * blocks
        phases["epochs"] = epochs * (HEAD_EPOCH_SECONDS + save)
    else:
        traces = 2 if scratch else 1  # validation, and from scratch the BatchNorm re-estimation's forward pass
        phases["first step"] = ((machine.trace_per_block + traces * machine.predict_trace_per_block) * blocks
                                + (n_train + n_val) * decode)
        refresh = min(n_train, BN_MAX_IMAGES) * infer * BN_FORWARD if scratch else 0.0
        phases["epochs"] = epochs * (steps * batch * train + n_val * infer + refresh + save)
    phases["report"] = 2 * n_val * infer + machine.predict_trace_per_block * blocks + save + REPORT_SECONDS
    return phases


def _prior(variant, weights) -> tuple[float, int, str | None, str]:
    """(top-1 prior, reference size, resolved tag, why) of a variant's weights."""
    if weights is None:
        return 0.0, 0, None, "random initialization"
    info = pretrained.resolve(get_config(variant), weights)
    top1 = info.top1
    if top1 is None:  # keras.applications' copies of the paper's weights: the paper's top-1
        same = [w for w in pretrained.table() if w.variant == info.variant and w.tag.startswith("pycls")]
        top1 = same[0].top1 if same and same[0].top1 else None
    if top1 is None:
        raise ValueError(f"no published top-1 for {variant} weights {weights!r}")
    return float(top1), int(info.train_size), info.tag, f"ImageNet top-1 {top1:.1f} ({info.tag})"


def _image_files(data) -> list:
    """The data's training image files (folder data), or [] (TFDS data has none)."""
    return list((getattr(data, "files", None) or {}).get("paths", []))


def images_side(data) -> int | None:
    """Median short side of (up to 64 of) the data's image files, or None without files."""
    files = _image_files(data)
    if not files:
        return None
    from PIL import Image
    step = max(1, len(files) // 64)
    sides = []
    for f in files[::step][:64]:
        try:
            with Image.open(f) as im:
                sides.append(min(im.size))
        except OSError:
            continue
    return int(np.median(sides)) if sides else None


def decode_seconds(data, limit: int = 16) -> float:
    """Seconds to read, decode and resize one of the data's image files (0 without files)."""
    import tensorflow as tf
    files = _image_files(data)[:limit]
    if not files:
        return 0.0
    start = time.perf_counter()
    for f in files:
        image = tf.io.decode_image(tf.io.read_file(str(f)), channels=3, expand_animations=False)
        tf.image.resize(image, (data.image_size, data.image_size)).numpy()
    return (time.perf_counter() - start) / len(files)


def candidates_for(machine: Machine, budget_seconds: float, n_train: int, n_val: int, num_classes: int,
                   batch: int, weights, variants, sizes, own_side, decode=0.0,
                   current_size=None) -> tuple[list[Candidate], list[str]]:
    """Every (variant, size, training) that fits, each with its most epochs; and the variants refused, with why."""
    out, refused = [], []
    for variant in variants:
        try:
            prior, native, tag, why = _prior(variant, weights)
        except ValueError as e:
            refused.append(f"{variant}: {e}")
            continue
        scratch = tag is None
        reference = native if not scratch else min(224, own_side or 224)
        t = tau(not scratch, n_train)
        for size in sizes:
            if scratch and own_side and size > 2 * own_side:
                continue
            halvings = max(0.0, math.log2(reference / size))
            loss = RESOLUTION_POINTS[0] * halvings + RESOLUTION_POINTS[1] * halvings ** 2
            for probe in ((False, True) if not scratch else (False,)):
                def phases_at(epochs):
                    return _phases(machine, variant, size, epochs, probe, n_train, n_val, batch, scratch,
                                   num_classes, decode, size != current_size)
                fixed = sum(phases_at(0).values())
                each = sum(phases_at(1).values()) - fixed
                epochs = min(MAX_EPOCHS, int((budget_seconds - fixed) // each)) if each > 0 else 0
                if epochs < 1:
                    continue
                phases = phases_at(epochs)
                out.append(Candidate(variant, tag, size, batch, epochs, "0:head" if probe else "auto", phases,
                                     prior, loss, UNDERTRAINED[not scratch] * math.exp(-epochs / t),
                                     LINEAR_PROBE_POINTS if probe else 0.0, why))
    return out, refused


@dataclass
class Plan:
    """The chosen run: `variant`, `weights`, `image_size`, `batch_size`, `epochs`, `unfreeze`, and why."""

    chosen: Candidate
    budget_minutes: float
    measured_seconds: float
    started: float  # time.perf_counter() when planning began: the budget's clock
    runners_up: list
    refused: list
    machine: Machine
    notes: list = field(default_factory=list)
    laps: dict = field(default_factory=dict)  # actual seconds of each phase, as `lap` records them
    _guard: "BudgetGuard | None" = None
    _last: float | None = None

    variant = property(lambda self: self.chosen.variant)
    weights = property(lambda self: self.chosen.weights)
    image_size = property(lambda self: self.chosen.image_size)
    batch_size = property(lambda self: self.chosen.batch_size)
    epochs = property(lambda self: self.chosen.epochs)
    unfreeze = property(lambda self: self.chosen.unfreeze)

    @property
    def deadline(self) -> float:
        return self.started + self.budget_minutes * 60

    @property
    def predicted_seconds(self) -> float:
        return self.measured_seconds + self.chosen.seconds

    def table(self) -> str:
        c = self.chosen
        training = ("linear probe (head only, on backbone features computed once)" if c.unfreeze == "0:head"
                    else "full fine-tuning (every stage from epoch 0, the training policy)")
        probe = f" - linear probe {c.probe_cost:.1f}" if c.probe_cost else ""
        lines = [f"Plan for {self.budget_minutes:g} min on this machine ({self.machine.precision}):",
                 f"  {c.variant}, weights {c.weights or 'none (random initialization)'}, {c.image_size} px, "
                 f"batch {c.batch_size}, {c.epochs} epochs, {training}",
                 f"  score {c.score:.1f} = prior {c.prior:.1f} ({c.reason}) - resolution {c.resolution:.1f} "
                 f"- under-training {c.undertrained:.1f}" + probe,
                 "", f"  {'phase':<12} {'predicted':>10}",
                 f"  {'measuring':<12} {self.measured_seconds:>9.0f}s"]
        lines += [f"  {name:<12} {sec:>9.0f}s" for name, sec in c.phases.items()]
        lines += [f"  {'total':<12} {self.predicted_seconds:>9.0f}s of {self.budget_minutes * 60:.0f}s", "",
                  "Runners-up (best of each variant; score = prior - resolution - under-training - probe):",
                  "  " + HEADER] + ["  " + r.row() for r in self.runners_up]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self):
        return self.table()

    def finetune_kwargs(self) -> dict:
        """The arguments of `wb.finetune` that carry the plan (epochs, unfreeze, pretrained, the guard)."""
        return {"epochs": self.epochs, "unfreeze": self.unfreeze, "pretrained": self.weights is not None,
                "callbacks": [self.guard()]}

    def guard(self, reserve: float | None = None) -> "BudgetGuard":
        """The callback that cuts the remaining epochs when the run falls behind the budget."""
        self._guard = BudgetGuard(self, self.chosen.phases["report"] if reserve is None else reserve)
        return self._guard

    def lap(self, phase: str) -> float:
        """Record the seconds since planning ended (or the last lap) as the actual time of `phase`."""
        now = time.perf_counter()
        self.laps[phase] = now - (self._last if self._last is not None else self.started + self.measured_seconds)
        self._last = now
        return self.laps[phase]

    def predicted(self) -> dict:
        """Predicted seconds by the phases a recipe laps: measuring, setup, build, training, report, total."""
        phases = dict(self.chosen.phases)
        return {"measuring": self.measured_seconds, "setup": phases.pop("setup"), "build": phases.pop("build"),
                "report": phases.pop("report"), "training": sum(phases.values()), "total": self.predicted_seconds}

    def record(self, result=None) -> dict:
        """The plan, its predicted and (after `lap`s) actual seconds, and any adaptation: for metrics.json."""
        c = self.chosen
        out = {"budget_minutes": self.budget_minutes, "variant": c.variant, "weights": c.weights,
               "image_size": c.image_size, "batch_size": c.batch_size, "epochs": c.epochs, "unfreeze": c.unfreeze,
               "score": round(c.score, 2), "prior": c.prior, "resolution": round(c.resolution, 2),
               "undertrained": round(c.undertrained, 2), "linear_probe": c.probe_cost, "reason": c.reason,
               "predicted_seconds": {k: round(v, 1) for k, v in self.predicted().items()},
               "runners_up": [r.row() for r in self.runners_up], "notes": list(self.notes)}
        if self.laps:
            actual = {"measuring": self.measured_seconds, **self.laps,
                      "total": (self._last or time.perf_counter()) - self.started}
            out["actual_seconds"] = {k: round(v, 1) for k, v in actual.items()}
        if result is not None:
            out["epochs_run"] = result.epochs_run
        out["adapted"] = list(self._guard.adapted) if self._guard is not None else []
        return out


class BudgetGuard(keras.callbacks.Callback):
    """Cuts the remaining epochs when, at the recent pace, the plan would overrun the budget.

    The first epoch (which traces the model) is judged only when the budget is already spent; from the
    second on, the pace is the median of the last three epochs, and the number of epochs that fit is
    recomputed after each one, so a passing slowdown that ends gives the epochs back. The time kept for
    the report was priced by the same profile as the epochs, so it grows by the factor the epochs run
    slower than planned: a machine that is busier than when it was measured is busier for the report too.
    """

    def __init__(self, plan: Plan, reserve: float):
        super().__init__()
        self.plan, self.reserve = plan, reserve
        self.stop_after = plan.epochs
        self.adapted: list[str] = []
        self._t0 = 0.0
        self._paces: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self._paces.append(now - self._t0)
        pace = float(np.median(self._paces[1:][-3:])) if len(self._paces) > 1 else self._paces[0]
        planned = self.plan.chosen.phases["epochs"] / self.plan.epochs
        slowdown = max(1.0, pace / planned) if len(self._paces) > 1 and planned > 0 else 1.0
        left = self.plan.deadline - self.reserve * slowdown - now
        if left <= 0:
            affordable = epoch + 1
        elif len(self._paces) == 1:
            affordable = self.stop_after
        else:
            affordable = min(self.plan.epochs, epoch + 1 + int(left // pace))
        if affordable != self.stop_after:
            msg = (f"Epochs take {pace:.1f} s (planned {planned:.1f} s) and {max(left, 0):.0f} s are left before "
                   f"the report ({self.reserve * slowdown:.0f} s kept for it) after epoch {epoch + 1}: " + (
                       f"training stops after epoch {affordable} of {self.plan.epochs} to finish within "
                       f"{self.plan.budget_minutes:g} min." if affordable < self.plan.epochs else
                       f"back on plan, all {self.plan.epochs} epochs fit."))
            self.adapted.append(msg)
            print(msg, flush=True)
            self.stop_after = affordable
        if epoch + 1 >= self.stop_after:
            self.model.stop_training = True


def plan(data, minutes: float, weights="imagenet", candidates=None, *, sizes=None, precision="auto",
         remeasure: bool = False, verbose: bool = True, started: float | None = None,
         machine: Machine | None = None) -> Plan:
    """The most accurate fine-tune of `candidates` (default `CANDIDATES`) that fits `minutes` here.

    data: an `ImageData` (its training / validation counts, classes and batch
    size are what is planned for; image files, when it has them, set the
    useful resolution from random initialization). weights: a tag
    ("imagenet", "pycls", ...) or None for random initialization. Measuring the
    machine is part of the budget (and cached: only the first plan pays it).
    Raises ValueError, before any training, when not even one epoch of the
    cheapest candidate fits. started: `time.perf_counter()` when the budget's
    clock started (default: now), e.g. to plan again within one budget.
    sizes: image sides to consider (default SIZES; from random initialization
    none above twice the images' own side). machine: a `Machine` to plan for
    instead of this one's measured profile.
    """
    from workbench.train.precision import resolve_precision
    started = time.perf_counter() if started is None else started
    minutes = checks.positive_number("minutes", minutes, " (the time budget in minutes)")
    variants = [resolve_variant(v) for v in (candidates or CANDIDATES)]
    capped = sizes is None  # the planner's own sizes: from scratch, none above twice the images' side
    sizes = [checks.image_size(s, "sizes") for s in (SIZES if sizes is None else sizes)]
    weights = None if weights in (None, "", "none", "None") else weights
    if machine is None:
        machine = measure(resolve_precision(precision), remeasure, verbose)
    n_train, n_val = data.num_train, data.num_val
    batch = data.batch_size
    own = images_side(data)
    decode = decode_seconds(data)
    spent = time.perf_counter() - started
    budget = minutes * 60 * MARGIN - spent
    found, refused = candidates_for(machine, budget, n_train, n_val, data.num_classes, batch, weights,
                                    variants, sizes, own if capped else None, decode, data.image_size)
    if not found:
        cheapest = min(variants, key=lambda v: complexity(v, min(sizes))["flops"])
        one = _phases(machine, cheapest, min(sizes), 1, False, n_train, n_val, batch, weights is None,
                      data.num_classes, decode, True)
        raise ValueError(
            f"A budget of {minutes:g} min cannot fit one epoch of the cheapest candidate here: {cheapest} at "
            f"{min(sizes)} px needs ~{(sum(one.values()) + spent) / 60:.1f} min for {n_train} training images "
            f"(measuring took {spent:.0f} s). Give more minutes, or fewer images (max_train_images)."
            + (f" Refused: {'; '.join(refused)}" if refused else ""))
    found.sort(key=lambda c: (-c.score, c.seconds))
    best_of = {}
    for c in found:
        best_of.setdefault(c.variant, c)
    runners = [c for c in best_of.values() if c is not found[0]][:8]
    notes = []
    if own:
        notes.append(f"The images' median short side is {own} px.")
    if found[0].seconds + spent < 0.7 * minutes * 60:
        notes.append(f"It finishes early: by the score, more epochs (at most {MAX_EPOCHS}, past the 24 measured) "
                     f"or a larger model would not raise the expected accuracy.")
    notes.append(f"Under-training time constant: {tau(weights is not None, n_train):.1f} epochs for "
                 f"{n_train} training images.")
    result = Plan(found[0], minutes, spent, started, runners, refused, machine, notes)
    if verbose:
        print(result.table())
    return result
