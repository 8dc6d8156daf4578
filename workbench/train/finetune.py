"""`finetune`: the training policy's schedule (any staged unfreezing, discriminative rates), resumable.

One call does the common thing: AdamW under a warmup + cosine schedule,
label smoothing, optional balanced class weights, `GradualUnfreezing` with a
`DiscriminativeOptimizer`, and (while the whole backbone is frozen) training
the head on backbone features computed once (`feature_cache`). "auto" and the
extras (augmentation, EMA, test-time augmentation, progressive resizing,
BatchNorm re-estimation) come from `workbench.train.policy.training_policy`. Every epoch is
checkpointed in `output_dir/checkpoints` (`checkpoints`); calling `finetune`
again with the same `output_dir` resumes after the last completed epoch.

The run is a sequence of named steps, the methods of `_Run` in the order
`finetune` calls them: check arguments, the training policy, place under the
strategy, compile, resume, head epochs on cached features, staged epochs
(in progressive-resizing phases), result (with test-time augmentation).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from workbench.utils import checks, runtime

from workbench.train import ema, progressive
from workbench.train.bn_refresh import BNRefresh
from workbench.train.checkpoints import Recorder, RunState, restore
from workbench.models.contract import STAGES, outputs_logits, stage_layers, trainable_candidates
from workbench.data.pipeline import steps_per_epoch
from workbench.train.distribute import describe, fitting, is_chief, make_strategy
from workbench.train.feature_cache import cache_features
from workbench.models.layers import set_grouped_conv_implementation
from workbench.train.discriminative import DiscriminativeOptimizer
from workbench.train.precision import resolve_precision, training_precision
from workbench.train.lr_schedules import WarmupCosine
from workbench.train.policy import training_policy
from workbench.train.tta import check_model as check_tta_model, tta_accuracy
from workbench.train.unfreeze import GradualUnfreezing, check_schedule, format_schedule, stages_at

OPTIMIZERS = ("adamw", "adam", "sgd")


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
    epoch_seconds: dict[int, float] = field(default_factory=dict)  # wall time of each epoch run here
    precision: str = "float32"
    strategy: str = ""
    policy: dict = field(default_factory=dict)         # the training policy actually used (policy.TrainingPolicy)
    evaluation: dict = field(default_factory=dict)     # with tta: plain and test-time-augmented val accuracy
    progressive: dict = field(default_factory=dict)    # with progressive: side per epoch, seconds saved

    @property
    def val_accuracy(self):
        return self.best_val_accuracy

    def summary(self) -> str:
        best = (f"best val_accuracy {self.best_val_accuracy:.4f} at epoch {self.best_epoch + 1}"
                if self.best_epoch is not None else "no validation")
        speed = (f", head epochs {self.feature_cache_speedup:.1f}x faster on cached features"
                 if self.feature_cache_speedup else "")
        return f"{self.epochs_run} epochs, {best}{speed}"


def finetune(model, data, epochs: int = 10, *, unfreeze=None, lr: float = 1e-3, lr_decay="auto",
             multipliers=None, optimizer="adamw", weight_decay: float = 0.05, label_smoothing: float = 0.1,
             class_weight=None, warmup: float = 0.05, output_dir=None, resume: bool = True, seed: int = 0,
             cache_features: bool = True, strategy=None, restore_best: bool = True, monitor="val_accuracy",
             callbacks=None, verbose="auto", deterministic: bool = True, jit_compile="auto",
             precision="auto", augment=None, ema: bool = False, tta: bool = False, progressive: bool = False,
             bn_refresh="auto", pretrained: bool = True) -> FinetuneResult:
    """Fine-tune `model` on `data` (an `ImageData`): head first, then stages from the top, lower rates below.

    model: a `keras.Model` from `wb.regnet`, or a zero-argument callable that
        builds one. With a `strategy` the model must own variables created under
        `strategy.scope()`: a callable is called inside the scope, and a model
        built outside it is cloned inside (weights copied); `result.model` is
        then the clone.
    strategy: None (the current tf.distribute strategy), a Strategy, or a name
        of `wb.make_strategy` ("auto", "mirrored", "multiworker", "tpu"); with
        several workers only the chief writes checkpoints.
    precision: "auto", "float32", "mixed_bfloat16" or "mixed_float16"
        (`workbench.train.precision`); the returned model is float32 either way.
    jit_compile: as Keras' `compile`; True (XLA, e.g. as a proxy for a TPU) runs
        grouped convolutions on their native op.
    unfreeze: schedule (dict or "0:head,2:stage4,4:stage3+stage2"); None or
        "auto": what `workbench.train.policy.training_policy` chose from the transfer
        benchmark for `pretrained` weights (or random initialization).
    lr: peak learning rate of the head (warmup over `warmup` of the steps,
        then cosine to 1%); stage k trains at lr / lr_decay**depth, or at
        lr * multipliers[stage]. lr_decay "auto": 1 with unfreeze="auto", 2.6
        with a schedule given (`training_policy`).
    class_weight: None, "balanced" (data.class_weights) or {index: weight}.
    cache_features: train head-only epochs on backbone features computed once
        (augmentation off for those epochs).
    output_dir: checkpoints go to output_dir/checkpoints; an existing run there
        is resumed (resume=False starts over).
    restore_best: the returned model holds the weights of the best epoch by
        `monitor` (default); False keeps the last epoch's.
    augment: None (the loader's augmentation) or a spec ("auto", "none", "light",
        "strong", "flip,crop,mixup", ...; see `workbench.data.augment`).
    ema: evaluate, keep and return the exponential moving average of the weights.
    tta: also report validation accuracy averaged over flipped / cropped views
        (`result.evaluation`); needs a classifier head.
    progressive: early epochs on smaller images (`workbench.train.progressive`).
    bn_refresh: re-estimate BatchNorm statistics on training images before each
        evaluation (`workbench.train.bn_refresh`); "auto": as the policy says.
    pretrained: whether `model` holds pretrained weights (what "auto" depends on).
    seed, deterministic: `seed` governs data order, augmentation, dropout and
        the order of cached features; with `deterministic` (TensorFlow op
        determinism) the same seed gives the same numbers on the same machine
        (`workbench.utils.runtime.seed_everything`).
    """
    run = _Run(data, epochs, unfreeze, lr, lr_decay, label_smoothing, class_weight, warmup, seed,
               restore_best, monitor, callbacks, verbose, deterministic, precision)
    run.policy(pretrained, augment, ema, tta, progressive, bn_refresh)
    run.place(model, strategy)
    run.compile(optimizer, multipliers, weight_decay, jit_compile)
    run.resume(output_dir, resume)
    with runtime.training_graph_optimization(), training_precision(run.model, run.precision):
        run.head_epochs(cache_features)
        run.staged_epochs()
    return run.result(output_dir)


def _verbosity(verbose) -> int:
    if verbose != "auto":
        return int(verbose)
    env = os.environ.get("WORKBENCH_PROGRESS", "")
    if env in ("bar", "lines"):
        return 1 if env == "bar" else 2
    return 1 if sys.stdout.isatty() else 2


def make_optimizer(optimizer, lr_schedule, weight_decay):
    """AdamW / Adam / SGD (Nesterov momentum 0.9) by name, no weight decay on norms and biases; or `optimizer`."""
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    name = checks.one_of("optimizer", str(optimizer).lower(), OPTIMIZERS)
    if name == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=lr_schedule, weight_decay=weight_decay)
    elif name == "adam":
        opt = keras.optimizers.Adam(learning_rate=lr_schedule)
    else:
        opt = keras.optimizers.SGD(learning_rate=lr_schedule, momentum=0.9, nesterov=True,
                                   weight_decay=weight_decay or None)
    if opt.weight_decay:
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt


class _Run:
    """One fine-tuning run; `finetune` calls its steps in order."""

    def __init__(self, data, epochs, unfreeze, lr, lr_decay, label_smoothing, class_weight, warmup, seed,
                 restore_best, monitor, callbacks, verbose, deterministic, precision):
        """Step 1: check every argument before any work, and seed the run."""
        self.epochs = checks.positive_int("epochs", epochs)
        self.lr = checks.positive_number("lr", lr, " (a learning rate, e.g. 1e-3)")
        self.lr_decay = lr_decay if lr_decay == "auto" else checks.lr_decay(lr_decay)
        self.label_smoothing = checks.fraction("label_smoothing", label_smoothing)
        self.warmup = checks.fraction("warmup", warmup, " (a fraction of all steps)")
        self.seed = checks.integer("seed", seed)
        self.precision = resolve_precision(precision)
        if class_weight == "balanced":
            class_weight = dict(data.class_weights)
        elif class_weight is not None and not isinstance(class_weight, dict):
            raise ValueError(f"class_weight must be None, 'balanced' or {{class index: weight}}, got {class_weight!r}.")
        self.unfreeze = unfreeze
        self.data, self.restore_best, self.monitor = data, restore_best, monitor
        self.verbosity = _verbosity(verbose)
        self.log: list[str] = []
        self.fit_kw = dict(verbose=self.verbosity, class_weight=class_weight, shuffle=False)  # tf.data shuffles
        self.callbacks = list(callbacks or [])
        self.speedup = self.resumed_at = self.bn_refresh = None
        self.stopped = False  # a callback stopped training (EarlyStopping, a time budget): no later phase runs
        runtime.seed_everything(self.seed, deterministic)

    def policy(self, pretrained, augment, ema_on, tta, progressive_on, bn_refresh):
        """Step 1b: the training policy ("auto" resolved by `training_policy`): schedule, decay, extras."""
        chosen = training_policy(self.unfreeze, self.epochs, pretrained, self.lr_decay,
                                 augment=augment if augment is not None else getattr(self.data, "augment", None),
                                 ema=ema_on, tta=tta, progressive=progressive_on, bn_refresh=bn_refresh)
        self.unfreeze, self.lr_decay, self.chosen = chosen.unfreeze, chosen.lr_decay, chosen
        self.augment = chosen.augment if augment is not None else None  # None: the loader's pipeline

    def extras(self, staged: bool) -> list:
        """The policy's callbacks for one fit: EMA swap first, then BatchNorm re-estimation."""
        out = [ema.callback()] if self.chosen.ema else []
        plain = getattr(self.data, "train_plain", None)
        if staged and self.chosen.bn_refresh and plain is not None:
            out.append(self.bn_refresh or BNRefresh(plain, model=self.model))
            self.bn_refresh = out[-1]
        return out

    def say(self, msg: str):
        self.log.append(msg)
        if self.verbosity:
            print(msg, flush=True)

    def place(self, model, strategy):
        """Step 2: the model under the tf.distribute strategy (built in its scope, or cloned into it)."""
        self.strategy = make_strategy(strategy) if strategy is not None else tf.distribute.get_strategy()
        with self.strategy.scope():
            if not isinstance(model, keras.Model):
                if not callable(model):
                    raise ValueError(f"model must be a keras.Model or a callable returning one, got {model!r}.")
                model = model()
            elif not all(self.strategy.extended.variable_created_in_scope(v.value) for v in model.weights[:3]):
                clone = keras.models.clone_model(model)
                clone.set_weights(model.get_weights())
                model = clone
                self.say(f"Cloned the model into {type(self.strategy).__name__}.scope() "
                         f"({self.strategy.num_replicas_in_sync} replicas).")
        self.model = model
        if self.chosen.tta:
            check_tta_model(model)
        self.schedule = check_schedule(self.unfreeze, model, self.epochs)
        out_units, data = model.outputs[0].shape[-1], self.data
        if out_units != data.num_classes:
            raise ValueError(f"The model predicts {out_units} classes but the data has {data.num_classes} "
                             f"({', '.join(data.class_names)}): build it with num_classes={data.num_classes}.")

    def compile(self, optimizer, multipliers, weight_decay, jit_compile):
        """Step 3: AdamW (or the given optimizer) under warmup + cosine, wrapped for discriminative rates."""
        n = int(self.data.train.cardinality())
        self.steps = n if n > 0 else steps_per_epoch(self.data.num_train, self.data.batch_size)
        total = self.steps * self.epochs
        schedule = WarmupCosine(self.lr, total_steps=max(total, 1), warmup_steps=int(self.warmup * total),
                                final_lr_frac=0.01)
        with self.strategy.scope():
            inner = make_optimizer(optimizer, schedule, weight_decay)
            if self.chosen.ema:
                self.say(f"EMA of weights, momentum {ema.enable(inner, total):.4g}: evaluated and kept.")
            self.optimizer = DiscriminativeOptimizer(inner, self.model, decay=self.lr_decay, multipliers=multipliers)
            if self.precision == "mixed_float16":
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            loss = keras.losses.CategoricalCrossentropy(label_smoothing=self.label_smoothing,
                                                        from_logits=outputs_logits(self.model))
            self.compile_kw = dict(loss=loss, metrics=["accuracy"], jit_compile=jit_compile)
            self.model.compile(optimizer=self.optimizer, **self.compile_kw)
            self.optimizer.build(trainable_candidates(self.model))
        if self.model.jit_compile:
            set_grouped_conv_implementation(self.model, "native")  # XLA compiles the native grouped op
        elif jit_compile is True:
            self.say("jit_compile=True was refused by Keras: TensorFlow's op determinism is on "
                     "(pass deterministic=False in a fresh process to train under XLA).")
        self.say(f"Training on {describe(self.strategy)} in {self.precision}"
                 f"{', XLA' if self.model.jit_compile else ''}.")
        self.settings = {"epochs": self.epochs, "unfreeze": format_schedule(self.schedule), "lr": self.lr,
                         "lr_decay": self.lr_decay, "optimizer": str(optimizer) if isinstance(optimizer, str)
                         else type(optimizer).__name__, "seed": self.seed, "steps_per_epoch": self.steps,
                         "policy": self.chosen.as_dict()}

    def resume(self, output_dir, resume):
        """Step 4: continue the run saved in output_dir, or start one there."""
        self.state = RunState(output_dir, self.settings, self.monitor, writer=is_chief(self.strategy))
        self.resumed_at = self.state.resume(self.model, resume, self.say)
        self.recorder = Recorder(self.model, self.state, keep_best_in_memory=self.restore_best)

    def encode(self, x, y):
        if y.shape.rank == 2:  # already one-hot (mixup / cutmix)
            return x, tf.cast(y, tf.float32)
        return x, tf.one_hot(tf.cast(y, tf.int32), self.data.num_classes)

    def head_epochs(self, cache):
        """Step 5: while only the head trains, train it on backbone features computed once."""
        start, end = self.state.next_epoch, 0
        while end < self.epochs and set(stages_at(self.schedule, end)) <= {"head"}:
            end += 1
        cached = (cache_features(self.model, self.data, self.seed, self.encode, first_epoch=start)
                  if cache and start < end else None)
        if cached is None:
            return
        with self.strategy.scope():  # its metrics too are the strategy's (synchronised across workers)
            cached.head.compile(optimizer=self.optimizer, **self.compile_kw)
        note = ("augmentation off" if cached.augmentation_off else
                "one un-shuffled pass of data.train, so any augmentation is fixed to that single view")
        self.say(f"Epochs {start + 1}-{end}: backbone frozen, training the head on cached backbone features "
                 f"({note}; extracted in {cached.seconds:.1f}s).")
        log = GradualUnfreezing({0: "head"}, verbose=self.verbosity, epochs=self.epochs)
        log.set_model(self.model)
        if start == 0:
            log.events = [{"epoch": 0, "stages": ["head"]}]
            frozen = ", ".join(s for s in STAGES if s != "head" and stage_layers(self.model, s))
            self.say(f"Epoch 1/{self.epochs}: unfroze head (lr x1); frozen: {frozen}")
        self.recorder.unfreezer = log
        with fitting(cached.head, self.strategy):
            cached.head.fit(cached.train, validation_data=cached.val, epochs=end, initial_epoch=start,
                            steps_per_epoch=self.steps,
                            callbacks=self.extras(staged=False) + [self.recorder] + self.callbacks, **self.fit_kw)
        self.recorder.stop_if_nan(self.lr)
        self.stopped = bool(cached.head.stop_training)
        seconds = [self.recorder.epoch_seconds[e] for e in range(start, end) if e in self.recorder.epoch_seconds]
        if seconds:
            self.speedup = cached.seconds / float(np.mean(seconds))
            self.say(f"Feature caching: {np.mean(seconds):.2f}s per head epoch vs {cached.seconds:.2f}s for one "
                     f"pass through the backbone: ~{self.speedup:.1f}x faster.")

    def staged_epochs(self):
        """Step 6: the full model, stages unfrozen on schedule."""
        start = self.state.next_epoch
        if start >= self.epochs or self.stopped:
            return
        unfreezer = GradualUnfreezing(self.schedule, verbose=self.verbosity, epochs=self.epochs)
        if self.recorder.unfreezer is not None:
            unfreezer.events = list(self.recorder.unfreezer.events)
        self.recorder.unfreezer = unfreezer
        for first, end, side, model in self.phases(start):
            train = (self.data.training(self.seed, first, self.augment) if hasattr(self.data, "training")
                     else self.data.train.repeat())
            if model is not self.model:
                train = progressive.resized(train, side)
            with fitting(model, self.strategy):
                model.fit(train.map(self.encode), validation_data=self.data.val.map(self.encode),
                          epochs=end, initial_epoch=first, steps_per_epoch=self.steps,
                          callbacks=self.extras(staged=True) + [unfreezer, self.recorder] + self.callbacks,
                          **self.fit_kw)
            self.recorder.stop_if_nan(self.lr)
            if model.stop_training:
                break
        self.log += unfreezer.log

    def phases(self, start):
        """[(first epoch, end epoch, side, model to fit)]: one phase at full size, or progressive resizing."""
        size = getattr(self.data, "image_size", None)
        if not (self.chosen.progressive and size):
            return [(start, self.epochs, size, self.model)]
        plan = [(max(a, start), b, side) for a, b, side in progressive.phases(self.epochs, size) if b > start]
        twin = None
        if any(side != size for *_, side in plan):
            with self.strategy.scope():
                twin = progressive.flexible(self.model)
                twin.compile(optimizer=self.optimizer, **self.compile_kw)
            self.say("Progressive resizing: " + ", ".join(f"epochs {a + 1}-{b} at {side}px" for a, b, side in plan))
        self.sides = {e: side for a, b, side in plan for e in range(a, b)}
        return [(a, b, side, self.model if side == size else twin) for a, b, side in plan]

    def result(self, output_dir) -> FinetuneResult:
        """Step 7: the best (or last) weights in the model, and what the run did."""
        state, recorder = self.state.state, self.recorder
        best_epoch = state["best_epoch"]
        if self.restore_best and best_epoch is not None:
            if recorder.best_weights is not None:
                self.model.set_weights(recorder.best_weights)
            elif self.state.dir is not None and (self.state.dir / "best.keras").exists():
                restore(self.model, self.state.dir / "best.keras", optimizer=False)
        evaluation = {}
        if self.chosen.tta:
            augment = self.augment or getattr(self.data, "augment", None)
            evaluation = tta_accuracy(self.model, self.data.val, flip="flip" in getattr(augment, "ops", ()))
            self.say(f"Test-time augmentation ({evaluation['tta_views']} views): val_accuracy "
                     f"{evaluation['val_accuracy']:.4f} plain, {evaluation['tta_val_accuracy']:.4f} with TTA.")
        return FinetuneResult(history=dict(state["history"]), events=state["events"],
                              epochs_run=state["epoch"] + 1, best_epoch=best_epoch,
                              best_val_accuracy=state["best_value"], model=self.model,
                              feature_cache_speedup=self.speedup, resumed_at=self.resumed_at,
                              output_dir=Path(output_dir) if output_dir is not None else None, log=self.log,
                              epoch_seconds=dict(recorder.epoch_seconds), precision=self.precision,
                              strategy=describe(self.strategy), policy=self.chosen.as_dict(),
                              evaluation=evaluation,
                              progressive=progressive.report(getattr(self, "sides", {}), recorder.epoch_seconds,
                                                             getattr(self.data, "image_size", None)))
