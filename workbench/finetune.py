"""`finetune`: head first, then staged unfreezing with discriminative rates, checkpointed and resumable.

One call does the common thing: AdamW under a warmup + cosine schedule,
label smoothing, optional balanced class weights, `GradualUnfreezing` with a
`DiscriminativeOptimizer`, and (while the whole backbone is frozen) training
the head on backbone features computed once. Every epoch writes
`output_dir/checkpoints/last.keras` (model + optimizer state) and
`state.json` (epoch, history, unfreeze events, best epoch); the best epoch by
validation accuracy is kept as `best.keras`. Calling `finetune` again with the
same `output_dir` resumes after the last completed epoch.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import keras
import tensorflow as tf

from workbench.model import STAGES, stage_layers
from workbench.optim import DiscriminativeOptimizer, inner_discriminative, trainable_candidates
from workbench.unfreeze import GradualUnfreezing, check_schedule, format_schedule, stages_at

_STATE_VERSION = 1


@dataclass
class FinetuneResult:
    """What a `finetune` run did: per-epoch history, unfreeze events, best epoch and the model."""

    history: dict[str, list]
    events: list[dict]
    epochs_run: int
    best_epoch: int | None
    best_val_accuracy: float | None
    model: keras.Model
    feature_cache_speedup: float | None = None
    resumed_at: int | None = None
    output_dir: Path | None = None
    log: list[str] = field(default_factory=list)

    @property
    def val_accuracy(self):
        return self.best_val_accuracy

    def summary(self) -> str:
        best = (f"best val_accuracy {self.best_val_accuracy:.4f} at epoch {self.best_epoch + 1}"
                if self.best_epoch is not None else "no validation")
        speed = (f", head epochs {self.feature_cache_speedup:.1f}x faster on cached features"
                 if self.feature_cache_speedup else "")
        return f"{self.epochs_run} epochs, {best}{speed}"


# ------------------------------------------------------------------ defaults and checks

def default_schedule(epochs: int) -> dict[int, list[str]]:
    """Head for the first ~third, then stage4, stage3+stage2, stage1+stem over the rest."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    head = max(1, round(epochs / 3))
    rest = epochs - head
    phases = [["stage4"], ["stage3", "stage2"], ["stage1", "stem"]]
    out: dict[int, list[str]] = {0: ["head"]}
    for i, stages in enumerate(phases):
        if rest <= 0:
            break
        e = head + (i * rest) // len(phases)
        out.setdefault(e, []).extend(stages)
    return out


def _verbose(verbose):
    if verbose != "auto":
        return int(verbose)
    env = os.environ.get("WORKBENCH_PROGRESS", "")
    if env in ("bar", "lines"):
        return 1 if env == "bar" else 2
    return 1 if sys.stdout.isatty() else 2


def _steps(ds, fallback: int) -> int:
    n = int(ds.cardinality())
    return n if n > 0 else fallback


def _head_is_chain(model) -> bool:
    """True if the model ends head_pool -> [head_dropout] -> head_fc (what feature caching assumes)."""
    names = [layer.name for layer in model.layers]
    if "head_pool" not in names or names[-1] == "head_pool":
        return False
    after = names[names.index("head_pool") + 1:]
    return all(n.startswith("head_") for n in after) and len(model.outputs) == 1


def _from_logits(model) -> bool:
    try:
        act = model.get_layer("head_fc").activation
    except ValueError:
        return False
    return getattr(act, "__name__", "") in ("linear", "identity")


@contextlib.contextmanager
def _all_trainable(model):
    """Temporarily make every layer trainable (so a saved model reloads with its optimizer state)."""
    layers = list(model._flatten_layers(include_self=False))
    flags = [layer.trainable for layer in layers]
    try:
        for layer in layers:
            layer.trainable = True
        yield
    finally:
        for layer, flag in zip(layers, flags):
            layer.trainable = flag


def _save(model, path: Path):
    tmp = path.with_name(path.stem + ".tmp.keras")
    with _all_trainable(model):
        model.save(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _num(x):
    return float(np.asarray(x))


def _current_lr(model) -> float:
    return _num(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


# ------------------------------------------------------------------ callbacks

class _Recorder(keras.callbacks.Callback):
    """Continuous history across fits and resumes; NaN guard; checkpoints and best model."""

    def __init__(self, full_model, state, ckpt_dir, monitor, keep_best_in_memory):
        super().__init__()
        self.full_model = full_model
        self.state = state
        self.ckpt_dir = ckpt_dir
        self.monitor = monitor
        self.keep_best = keep_best_in_memory
        self.best_weights = None
        self.nan = None
        self.epoch_seconds: dict[int, float] = {}
        self.unfreezer: GradualUnfreezing | None = None
        self._t0 = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(_num(loss)):
            self.nan = (self._epoch, batch)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan is not None:
            return
        self.epoch_seconds[epoch] = time.perf_counter() - self._t0
        logs = dict(logs or {})
        logs["lr"] = _current_lr(self.full_model)
        h = self.state["history"]
        for k in set(h) | set(logs):
            h.setdefault(k, [None] * (self.state["epoch"] + 1))
            h[k].append(_num(logs[k]) if k in logs and logs[k] is not None else None)
        self.state["epoch"] = epoch
        if self.unfreezer is not None:
            known = {e["epoch"] for e in self.state["events"]}
            self.state["events"] += [e for e in self.unfreezer.events if e["epoch"] not in known]
        value = logs.get(self.monitor)
        improved = value is not None and (self.state["best_value"] is None or value > self.state["best_value"])
        if improved:
            self.state["best_value"], self.state["best_epoch"] = _num(value), epoch
            if self.keep_best:
                self.best_weights = [w.copy() for w in self.full_model.get_weights()]
        if self.ckpt_dir is not None:
            last = self.ckpt_dir / "last.keras"
            _save(self.full_model, last)
            if improved:
                shutil.copyfile(last, self.ckpt_dir / "best.tmp.keras")
                os.replace(self.ckpt_dir / "best.tmp.keras", self.ckpt_dir / "best.keras")
            _write_json(self.ckpt_dir / "state.json", self.state)


# ------------------------------------------------------------------ feature caching

def _extract(feature_model, ds):
    """One pass of `ds` through the frozen backbone: (features, labels, seconds)."""
    fn = tf.function(lambda x: feature_model(x, training=False), reduce_retracing=True)
    feats, labels = [], []
    t0 = time.perf_counter()
    for x, y in ds:
        feats.append(fn(x).numpy())
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels), time.perf_counter() - t0


def _feature_datasets(model, data, batch_size, seed, encode):
    pool = model.get_layer("head_pool")
    feature_model = keras.Model(model.inputs, pool.output)
    plain = getattr(data, "train_plain", None)
    train_src = plain if plain is not None else data.train
    xt, yt, t_train = _extract(feature_model, train_src)
    xv, yv, t_val = _extract(feature_model, data.val)
    n = len(xt)
    train = (tf.data.Dataset.from_tensor_slices((xt, yt)).shuffle(n, seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size, drop_remainder=n > batch_size).map(encode))
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(batch_size).map(encode)
    head_model = keras.Model(pool.output, model.outputs[0], name=f"{model.name}_head")
    return head_model, train, val, t_train + t_val, plain is not None


# ------------------------------------------------------------------ the engine

def _in_scope(model, strategy) -> bool:
    return all(strategy.extended.variable_created_in_scope(v.value) for v in model.weights[:3])


def _make_optimizer(optimizer, lr_schedule, weight_decay):
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    name = str(optimizer).lower()
    if name == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=lr_schedule, weight_decay=weight_decay)
    elif name == "adam":
        opt = keras.optimizers.Adam(learning_rate=lr_schedule)
    elif name == "sgd":
        opt = keras.optimizers.SGD(learning_rate=lr_schedule, momentum=0.9, nesterov=True,
                                   weight_decay=weight_decay or None)
    else:
        raise ValueError(f"optimizer must be 'adamw', 'adam', 'sgd' or a keras optimizer, got {optimizer!r}.")
    if opt.weight_decay:
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt


def _lr_schedule(lr, total_steps, warmup_steps):
    try:
        from workbench.schedules import WarmupCosine
    except ImportError:  # pragma: no cover - schedules.py ships with the package
        return keras.optimizers.schedules.CosineDecay(0.0, max(total_steps - warmup_steps, 1),
                                                      warmup_target=lr, warmup_steps=warmup_steps)
    return WarmupCosine(lr, total_steps=max(total_steps, 1), warmup_steps=warmup_steps, final_lr_frac=0.01)


def finetune(model, data, epochs: int = 10, *, unfreeze=None, lr: float = 1e-3, lr_decay: float = 2.6,
             multipliers=None, optimizer="adamw", weight_decay: float = 0.05, label_smoothing: float = 0.1,
             class_weight=None, warmup: float = 0.05, output_dir=None, resume: bool = True, seed: int = 0,
             cache_features: bool = True, strategy=None, restore_best: bool = True, monitor="val_accuracy",
             callbacks=None, verbose="auto", deterministic: bool = False, jit_compile="auto") -> FinetuneResult:
    """Fine-tune `model` on `data` (an `ImageData`): head first, then stages from the top, lower rates below.

    model: a `keras.Model` from `wb.regnet`, or a zero-argument callable that
        builds one. With a `strategy` (tf.distribute: MirroredStrategy for
        several GPUs, TPUStrategy) the model must own variables created under
        `strategy.scope()`: a callable is called inside the scope, and a model
        built outside it is cloned inside (weights copied); `result.model` is
        then the clone.
    unfreeze: schedule (dict or "0:head,2:stage4,4:stage3+stage2"); default
        `default_schedule(epochs)`.
    lr: peak learning rate of the head (warmup over `warmup` of the steps,
        then cosine to 1%); stage k trains at lr / lr_decay**depth, or at
        lr * multipliers[stage].
    class_weight: None, "balanced" (data.class_weights) or {index: weight}.
    cache_features: train head-only epochs on backbone features computed once
        (augmentation off for those epochs).
    output_dir: checkpoints go to output_dir/checkpoints; an existing run there
        is resumed (resume=False starts over).
    restore_best: the returned model holds the weights of the best epoch by
        `monitor` (default); False keeps the last epoch's.
    deterministic: tf.config.experimental.enable_op_determinism() (same seed,
        same numbers; CPU runs are already reproducible without it here).
    """
    # ---- arguments, all checked before any training
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive learning rate (e.g. 1e-3), got {lr!r}.")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup is a fraction of all steps in [0, 1), got {warmup!r}.")
    if class_weight == "balanced":
        class_weight = dict(data.class_weights)
    elif class_weight is not None and not isinstance(class_weight, dict):
        raise ValueError(f"class_weight must be None, 'balanced' or {{class index: weight}}, got {class_weight!r}.")
    verbose = _verbose(verbose)
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    log: list[str] = []

    def say(msg):
        log.append(msg)
        if verbose:
            print(msg, flush=True)

    with strategy.scope():
        if not isinstance(model, keras.Model):
            if not callable(model):
                raise ValueError(f"model must be a keras.Model or a callable returning one, got {model!r}.")
            model = model()
        elif not _in_scope(model, strategy):
            clone = keras.models.clone_model(model)
            clone.set_weights(model.get_weights())
            model = clone
            say(f"Cloned the model into {type(strategy).__name__}.scope() ({strategy.num_replicas_in_sync} replicas).")
    schedule = check_schedule(unfreeze if unfreeze is not None else default_schedule(epochs), model, epochs)
    num_classes = data.num_classes
    out_units = model.outputs[0].shape[-1]
    if out_units != num_classes:
        raise ValueError(f"The model predicts {out_units} classes but the data has {num_classes} "
                         f"({', '.join(data.class_names)}): build it with num_classes={num_classes}.")
    steps = _steps(data.train, max(1, data.num_train // data.batch_size))
    total_steps = steps * epochs
    settings = {"epochs": epochs, "unfreeze": format_schedule(schedule), "lr": float(lr), "lr_decay": float(lr_decay),
                "optimizer": str(optimizer) if isinstance(optimizer, str) else type(optimizer).__name__,
                "seed": seed, "steps_per_epoch": steps}

    def encode(x, y):
        return x, tf.one_hot(tf.cast(y, tf.int32), num_classes)

    with strategy.scope():
        inner = _make_optimizer(optimizer, _lr_schedule(lr, total_steps, int(warmup * total_steps)), weight_decay)
        opt = DiscriminativeOptimizer(inner, model, decay=lr_decay, multipliers=multipliers)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, from_logits=_from_logits(model))
        compile_kw = dict(loss=loss, metrics=["accuracy"], jit_compile=jit_compile)
        model.compile(optimizer=opt, **compile_kw)
        opt.build(trainable_candidates(model))

    # ---- checkpoints and resume
    ckpt_dir = None
    state = {"version": _STATE_VERSION, "settings": settings, "epoch": -1, "history": {}, "events": [],
             "best_epoch": None, "best_value": None, "monitor": monitor}
    start = 0
    resumed_at = None
    if output_dir is not None:
        ckpt_dir = Path(output_dir) / "checkpoints"
        state_file = ckpt_dir / "state.json"
        if state_file.exists() and resume:
            saved = json.loads(state_file.read_text())
            diff = {k: (saved["settings"].get(k), v) for k, v in settings.items()
                    if k in ("epochs", "unfreeze", "lr", "steps_per_epoch") and saved["settings"].get(k) != v}
            if diff:
                raise ValueError(f"{ckpt_dir} holds a run with other settings "
                                 f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}). "
                                 "Use another output_dir, or resume=False to start over.")
            _restore(model, ckpt_dir / "last.keras")
            state = saved
            start = resumed_at = state["epoch"] + 1
            say(f"Resuming from {ckpt_dir / 'last.keras'}: epochs 1-{start} done, continuing at epoch "
                f"{start + 1}/{epochs} (optimizer step {int(opt.iterations.numpy())}).")
        elif state_file.exists():
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    recorder = _Recorder(model, state, ckpt_dir, monitor, keep_best_in_memory=restore_best)
    user_callbacks = list(callbacks or [])
    fit_kw = dict(verbose=verbose, class_weight=class_weight, shuffle=False)  # tf.data shuffles
    speedup = None

    # ---- head-only epochs on cached features
    head_epochs = 0
    while head_epochs < epochs and set(stages_at(schedule, head_epochs)) <= {"head"}:
        head_epochs += 1
    use_cache = cache_features and start < head_epochs and _head_is_chain(model)
    if use_cache:
        with strategy.scope():
            head_model, ftrain, fval, t_extract, plain = _feature_datasets(model, data, data.batch_size, seed, encode)
            head_model.compile(optimizer=opt, **compile_kw)
        note = ("augmentation off" if plain else
                "one un-shuffled pass of data.train, so any augmentation is fixed to that single view")
        say(f"Epochs {start + 1}-{head_epochs}: backbone frozen, training the head on cached backbone features "
            f"({note}; extracted in {t_extract:.1f}s).")
        head_log = GradualUnfreezing({0: "head"}, verbose=verbose, epochs=epochs)
        head_log.set_model(model)
        if start == 0:
            head_log.events = [{"epoch": 0, "stages": ["head"]}]
            say(f"Epoch 1/{epochs}: unfroze head (lr x1); frozen: "
                f"{', '.join(s for s in STAGES if s != 'head' and stage_layers(model, s))}")
        recorder.unfreezer = head_log
        head_model.fit(ftrain, validation_data=fval, epochs=head_epochs, initial_epoch=start,
                       callbacks=[recorder] + user_callbacks, **fit_kw)
        _check_nan(recorder, model, ckpt_dir, lr)
        cached = [recorder.epoch_seconds[e] for e in range(start, head_epochs) if e in recorder.epoch_seconds]
        if cached:
            speedup = t_extract / float(np.mean(cached))
            say(f"Feature caching: {np.mean(cached):.2f}s per head epoch vs {t_extract:.2f}s for one pass "
                f"through the backbone: ~{speedup:.1f}x faster.")
        start = head_epochs

    # ---- the full model, with staged unfreezing
    if start < epochs:
        unfreezer = GradualUnfreezing(schedule, verbose=verbose, epochs=epochs)
        if use_cache:
            unfreezer.events = list(recorder.unfreezer.events)
        recorder.unfreezer = unfreezer
        train = data.train.map(encode)
        val = data.val.map(encode)
        model.fit(train, validation_data=val, epochs=epochs, initial_epoch=start,
                  callbacks=[unfreezer, recorder] + user_callbacks, **fit_kw)
        _check_nan(recorder, model, ckpt_dir, lr)
        log += unfreezer.log

    # ---- result
    best_epoch = state["best_epoch"]
    if restore_best and best_epoch is not None:
        if recorder.best_weights is not None:
            model.set_weights(recorder.best_weights)
        elif ckpt_dir is not None and (ckpt_dir / "best.keras").exists():
            _restore(model, ckpt_dir / "best.keras", optimizer=False)
    if ckpt_dir is not None:
        (ckpt_dir / "settings.json").write_text(json.dumps(settings, indent=1))
    history = {k: v for k, v in state["history"].items()}
    return FinetuneResult(history=history, events=state["events"], epochs_run=state["epoch"] + 1,
                          best_epoch=best_epoch, best_val_accuracy=state["best_value"], model=model,
                          feature_cache_speedup=speedup, resumed_at=resumed_at,
                          output_dir=Path(output_dir) if output_dir is not None else None, log=log)


def _restore(model, path: Path, optimizer: bool = True):
    """Copy weights (and optimizer state) from a checkpoint into `model` and its compiled optimizer."""
    ckpt = keras.models.load_model(path)
    model.set_weights(ckpt.get_weights())
    if not optimizer:
        return
    src, dst = ckpt.optimizer.variables, model.optimizer.variables
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
        raise ValueError(f"The optimizer state in {path} does not match this model's optimizer "
                         f"({len(src)} vs {len(dst)} variables). Use another output_dir or resume=False.")
    for a, b in zip(src, dst):
        b.assign(a.numpy())


def _check_nan(recorder, model, ckpt_dir, lr):
    if recorder.nan is None:
        return
    epoch, batch = recorder.nan
    last = ckpt_dir / "last.keras" if ckpt_dir is not None else None
    kept = ""
    if last is not None and last.exists():
        _restore(model, last)
        kept = f" The model holds the last good checkpoint ({last}, after epoch {recorder.state['epoch'] + 1})."
    raise FloatingPointError(
        f"The loss became NaN/inf in epoch {epoch + 1}, batch {batch + 1}; training stopped.{kept} "
        f"Try a lower lr (now {lr}), check the inputs for NaNs, or disable mixed precision.")
