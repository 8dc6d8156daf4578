"""`finetune`: the training policy's schedule (any staged unfreezing, discriminative rates), resumable.

One call does the common thing: AdamW under a warmup + cosine schedule,
label smoothing, optional balanced class weights, `GradualUnfreezing` with a
`DiscriminativeOptimizer`, and (while the whole backbone is frozen) training
the head on backbone features computed once (`feature_cache`). "auto" and the
extras (augmentation, EMA, test-time augmentation, progressive resizing,
BatchNorm re-estimation) come from `workbench.train.policy.training_policy`. Every epoch is
checkpointed in `output_dir/checkpoints` (`checkpoints`); calling `finetune`
again with the same `output_dir` resumes after the last completed epoch.

`finetune` groups its keywords into settings checked once (`workbench.train.settings`)
and resolves the training policy once (or takes one resolved already); the run is then
a sequence of named steps, the methods of `_Run` in the order `finetune` calls them:
place under the strategy, compile, resume, head epochs on cached features, staged
epochs (in progressive-resizing phases), result (with test-time augmentation).
"""
from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import tensorflow as tf

from workbench.utils import checks, runtime
from workbench.utils.say import Say

from workbench.train import ema, multilabel, progressive
from workbench.train.bn_refresh import BNRefresh
from workbench.train.checkpoints import Recorder, RunState, restore
from workbench.models.contract import outputs_logits, trainable_candidates
from workbench.data.pipeline import steps_per_epoch
from workbench.train.distribute import describe, fitting, is_chief, make_strategy
from workbench.train.feature_cache import cache_features
from workbench.models.layers import set_grouped_conv_implementation
from workbench.train.discriminative import DiscriminativeOptimizer
from workbench.train.precision import choose_precision, training_precision
from workbench.train.result import FinetuneResult
from workbench.train.lr_schedules import WarmupCosine
from workbench.train.policy import TrainingPolicy, training_policy
from workbench.train.settings import Optimization, Outputs, Runtime
from workbench.train.tta import check_model as check_tta_model, tta_accuracy
from workbench.train.unfreeze import GradualUnfreezing

OPTIMIZERS = ("adamw", "adam", "sgd")


def finetune(model, data, epochs: int = 10, *, unfreeze=None, lr: float = 1e-3, lr_decay="auto",
             multipliers=None, optimizer="adamw", weight_decay: float = 0.05, label_smoothing: float = 0.1,
             class_weight=None, warmup: float = 0.05, output_dir=None, resume: bool = True, seed: int = 0,
             cache_features: bool = True, strategy=None, restore_best: bool = True, monitor="val_accuracy",
             callbacks=None, tensorboard: bool = True, verbose="auto", deterministic: bool = True, jit_compile="auto",
             precision="auto", augment=None, ema: bool = False, tta: bool = False, progressive: bool = False,
             bn_refresh="auto", pretrained=None, policy: TrainingPolicy | None = None) -> FinetuneResult:
    """Fine-tune `model` on `data` (an `ImageData`) under the training policy: by default every stage from epoch 0.

    The keywords come in four groups, each made once here: the training policy
    (`policy`, or its parts unfreeze, lr_decay, augment, ema, tta, progressive,
    bn_refresh, pretrained), `Optimization` (lr, optimizer, weight_decay,
    multipliers, label_smoothing, class_weight, warmup), `Runtime` (seed,
    deterministic, precision, strategy, jit_compile, cache_features, verbose)
    and `Outputs` (output_dir, resume, restore_best, monitor, callbacks, tensorboard); see
    `workbench.train.settings`.

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
    policy: a `TrainingPolicy` resolved already (`wb.training_policy(...)`), used
        as it is; its parts are then not passed here.
    unfreeze: schedule (a dict, "0:head,2:stage4,4:stage3+stage2" or a `Schedule`);
        None or "auto": what `workbench.train.policy.training_policy` chose from the
        transfer benchmark for `pretrained` weights (or random initialization).
    lr: peak learning rate of the head (warmup over `warmup` of the steps,
        then cosine to 1%); stage k trains at lr / lr_decay**depth, or at
        lr * multipliers[stage]. lr_decay "auto": 1 with unfreeze="auto", 2.6
        with a schedule given (`training_policy`).
    class_weight: None, "balanced" (data.class_weights) or {index: weight}; multi-label data: each class's
        positive weight in the binary cross-entropy (whose monitor is then val_map, mean average precision).
    cache_features: train head-only epochs on backbone features computed once
        (augmentation off for those epochs).
    output_dir: checkpoints go to output_dir/checkpoints; an existing run there
        is resumed (resume=False starts over). With `tensorboard` (default) the
        epochs' metrics also go to output_dir/tensorboard (TensorBoard event files).
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
    pretrained: whether `model` holds pretrained weights (what "auto" depends on;
        None: True).
    seed, deterministic: `seed` governs data order, augmentation, dropout and
        the order of cached features; with `deterministic` (TensorFlow op
        determinism) the same seed gives the same numbers on the same machine
        (`workbench.utils.runtime.seed_everything`).
    """
    epochs = checks.positive_int("epochs", epochs)
    optimization = Optimization.checked(lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                                        multipliers=multipliers, label_smoothing=label_smoothing,
                                        class_weight=class_weight, warmup=warmup)
    setup = Runtime.checked(seed=seed, deterministic=deterministic, precision=precision, strategy=strategy,
                            jit_compile=jit_compile, cache_features=cache_features, verbose=verbose)
    if multilabel.is_multi_label(data) and monitor == "val_accuracy":
        monitor = multilabel.MONITOR  # mean average precision
    outputs = Outputs.checked(output_dir=output_dir, resume=resume, restore_best=restore_best, monitor=monitor,
                              callbacks=callbacks, tensorboard=tensorboard)
    parts = dict(unfreeze=unfreeze, lr_decay=lr_decay, augment=augment, ema=ema, tta=tta, progressive=progressive,
                 bn_refresh=bn_refresh, pretrained=pretrained)
    run = _Run(data, epochs, _policy(policy, parts, data, epochs), optimization, setup, outputs,
               own_pipeline=policy is None and augment is None)
    run.place(model)
    run.choose_precision()
    run.compile()
    run.resume()
    with runtime.training_graph_optimization(), training_precision(run.model, run.setup.precision):
        run.head_epochs()
        run.staged_epochs()
    return run.result()


def _policy(policy, parts: dict, data, epochs: int) -> TrainingPolicy:
    """The run's training policy: `policy` as it is, else resolved once from its parts."""
    defaults = dict(unfreeze=None, lr_decay="auto", augment=None, ema=False, tta=False, progressive=False,
                    bn_refresh="auto", pretrained=None)
    if policy is None:
        augment = parts["augment"] if parts["augment"] is not None else getattr(data, "augment", None)
        pretrained = True if parts["pretrained"] is None else parts["pretrained"]
        return training_policy(parts["unfreeze"], epochs, pretrained, parts["lr_decay"], augment=augment,
                               ema=parts["ema"], tta=parts["tta"], progressive=parts["progressive"],
                               bn_refresh=parts["bn_refresh"])
    if not isinstance(policy, TrainingPolicy):
        raise ValueError(f"policy must be a TrainingPolicy from wb.training_policy(...), got {policy!r}.")
    given = [k for k, v in parts.items() if v != defaults[k]
             and not (k == "pretrained" and v == policy.pretrained)]
    if given:
        raise ValueError(f"finetune got policy= and also {', '.join(given)}: the policy holds them; pass them to "
                         "wb.training_policy(...) instead, or drop policy=.")
    return policy


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

    def __init__(self, data, epochs: int, policy: TrainingPolicy, optimization: Optimization, setup: Runtime,
                 outputs: Outputs, own_pipeline: bool):
        """Step 1: the checked settings and the resolved policy; the run seeded."""
        self.data, self.epochs, self.chosen = data, epochs, policy
        self.opt, self.setup, self.outputs = optimization, setup, outputs
        self.augment = None if own_pipeline else policy.augment  # None: the loader's pipeline
        self.say = Say(setup.verbosity)
        self.log = self.say.lines
        self.multi_label = multilabel.is_multi_label(data)
        self.fit_kw = dict(verbose=setup.verbosity, shuffle=False,  # tf.data shuffles; multi-label: weights in the loss
                           class_weight=None if self.multi_label else optimization.class_weights(data))
        self.callbacks = list(outputs.callbacks)
        self.speedup = self.resumed_at = self.bn_refresh = None
        self.stopped = False  # a callback stopped training (EarlyStopping, a time budget): no later phase runs
        runtime.seed_everything(setup.seed, setup.deterministic)

    def extras(self, staged: bool) -> list:
        """The policy's callbacks for one fit: EMA swap first, then BatchNorm re-estimation."""
        out = [ema.callback()] if self.chosen.ema else []
        plain = getattr(self.data, "train_plain", None)
        if staged and self.chosen.bn_refresh and plain is not None:
            out.append(self.bn_refresh or BNRefresh(plain, model=self.model))
            self.bn_refresh = out[-1]
        return out

    def place(self, model):
        """Step 2: the model under the tf.distribute strategy (built in its scope, or cloned into it)."""
        strategy = self.setup.strategy
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
        if self.multi_label:
            multilabel.check_model(model, self.chosen.tta)
        elif self.chosen.tta:
            check_tta_model(model)
        self.schedule = self.chosen.unfreeze.check(model, self.epochs)
        out_units, data = model.outputs[0].shape[-1], self.data
        if out_units != data.num_classes:
            raise ValueError(f"The model predicts {out_units} classes but the data has {data.num_classes} "
                             f"({', '.join(data.class_names)}): build it with num_classes={data.num_classes}.")
        self.unfreezer = GradualUnfreezing(self.schedule, epochs=self.epochs, say=self.say)

    def choose_precision(self):
        """Step 2b: the precision "auto" decided for this model, batch and machine (`choose_precision`)."""
        asked = self.setup.precision
        self.precision_choice = choose_precision(self.model, asked, self.data.batch_size,
                                                 getattr(self.data, "image_size", None),
                                                 self.strategy.num_replicas_in_sync,
                                                 steps=self.steps_per_epoch() * self.epochs,
                                                 phases=len(self.schedule.steps))
        self.setup = replace(self.setup, precision=self.precision_choice.precision)
        if asked == "auto":
            self.say(f"Precision auto: {self.precision_choice.reason}; {self.setup.precision} chosen.")

    def steps_per_epoch(self) -> int:
        n = int(self.data.train.cardinality())
        return n if n > 0 else steps_per_epoch(self.data.num_train, self.data.batch_size)

    def compile(self):
        """Step 3: AdamW (or the given optimizer) under warmup + cosine, wrapped for discriminative rates."""
        opt, setup = self.opt, self.setup
        self.steps = self.steps_per_epoch()
        total = self.steps * self.epochs
        schedule = WarmupCosine(opt.lr, total_steps=max(total, 1), warmup_steps=int(opt.warmup * total),
                                final_lr_frac=0.01)
        with self.strategy.scope():
            inner = make_optimizer(opt.optimizer, schedule, opt.weight_decay)
            if self.chosen.ema:
                self.say(f"EMA of weights, momentum {ema.enable(inner, total):.4g}: evaluated and kept.")
            self.optimizer = DiscriminativeOptimizer(inner, self.model, decay=self.chosen.lr_decay,
                                                     multipliers=opt.multipliers)
            if setup.precision == "mixed_float16":
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            loss, metrics = (multilabel.loss_and_metrics(self.model, self.data, opt.label_smoothing,
                                                         opt.class_weights(self.data)) if self.multi_label else
                             (keras.losses.CategoricalCrossentropy(label_smoothing=opt.label_smoothing,
                                                                   from_logits=outputs_logits(self.model)), ["accuracy"]))
            self.compile_kw = dict(loss=loss, metrics=metrics, jit_compile=setup.jit_compile)
            self.model.compile(optimizer=self.optimizer, **self.compile_kw)
            self.optimizer.build(trainable_candidates(self.model))
        if self.model.jit_compile:
            set_grouped_conv_implementation(self.model, "native")  # XLA compiles the native grouped op
        elif setup.jit_compile is True:
            self.say("jit_compile=True was refused by Keras: TensorFlow's op determinism is on "
                     "(pass deterministic=False in a fresh process to train under XLA).")
        self.say(f"Training on {describe(self.strategy)} in {setup.precision}"
                 f"{', XLA' if self.model.jit_compile else ''}.")
        self.settings = {"epochs": self.epochs, "unfreeze": str(self.schedule), "lr": opt.lr,
                         "lr_decay": self.chosen.lr_decay, "optimizer": opt.optimizer_name, "seed": setup.seed,
                         "steps_per_epoch": self.steps, "policy": self.chosen.as_dict()}

    def resume(self):
        """Step 4: continue the run saved in output_dir, or start one there."""
        out = self.outputs
        self.state = RunState(out.output_dir, self.settings, out.monitor, writer=is_chief(self.strategy))
        self.resumed_at = self.state.resume(self.model, out.resume, self.say)
        self.callbacks += out.tensorboard_callbacks(writer=is_chief(self.strategy))
        self.recorder = Recorder(self.model, self.state, keep_best_in_memory=out.restore_best)
        self.recorder.unfreezer = self.unfreezer

    def encode(self, x, y):
        if y.shape.rank == 2:  # already one-hot (mixup / cutmix)
            return x, tf.cast(y, tf.float32)
        return x, tf.one_hot(tf.cast(y, tf.int32), self.data.num_classes)

    def head_epochs(self):
        """Step 5: while only the head trains, train it on backbone features computed once."""
        start, seed = self.state.next_epoch, self.setup.seed
        until = self.schedule.head_only_until
        end = self.epochs if until is None else min(until, self.epochs)
        cached = (cache_features(self.model, self.data, seed, self.encode, first_epoch=start)
                  if self.setup.cache_features and start < end else None)
        if cached is None:
            return
        with self.strategy.scope():  # its metrics too are the strategy's (synchronised across workers)
            cached.head.compile(optimizer=self.optimizer, **self.compile_kw)
        note = ("augmentation off" if cached.augmentation_off else
                "one un-shuffled pass of data.train, so any augmentation is fixed to that single view")
        self.say(f"Epochs {start + 1}-{end}: backbone frozen, training the head on cached backbone features "
                 f"({note}; extracted in {cached.seconds:.1f}s).")
        if start == 0:
            self.unfreezer.set_model(self.model)
            self.unfreezer.announce(0)
        with fitting(cached.head, self.strategy):
            cached.head.fit(cached.train, validation_data=cached.val, epochs=end, initial_epoch=start,
                            steps_per_epoch=self.steps,
                            callbacks=self.extras(staged=False) + [self.recorder] + self.callbacks, **self.fit_kw)
        self.recorder.stop_if_nan(self.opt.lr)
        self.stopped = bool(cached.head.stop_training)
        seconds = [self.recorder.epoch_seconds[e] for e in range(start, end) if e in self.recorder.epoch_seconds]
        if seconds:
            self.speedup = cached.seconds / float(np.mean(seconds))
            self.say(f"Feature caching: {np.mean(seconds):.2f}s per head epoch vs {cached.seconds:.2f}s for one "
                     f"pass through the backbone: ~{self.speedup:.1f}x faster.")

    def staged_epochs(self):
        """Step 6: the full model, stages unfrozen on schedule."""
        start, seed = self.state.next_epoch, self.setup.seed
        if start >= self.epochs or self.stopped:
            return
        for first, end, side, model in self.phases(start):
            train = (self.data.training(seed, first, self.augment) if hasattr(self.data, "training")
                     else self.data.train.repeat())
            if model is not self.model:
                train = progressive.resized(train, side)
            with fitting(model, self.strategy):
                model.fit(train.map(self.encode), validation_data=self.data.val.map(self.encode),
                          epochs=end, initial_epoch=first, steps_per_epoch=self.steps,
                          callbacks=self.extras(staged=True) + [self.unfreezer, self.recorder] + self.callbacks,
                          **self.fit_kw)
            self.recorder.stop_if_nan(self.opt.lr)
            if model.stop_training:
                break

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

    def result(self) -> FinetuneResult:
        """Step 7: the best (or last) weights in the model, and what the run did."""
        state, recorder = self.state.state, self.recorder
        best_epoch = state["best_epoch"]
        if self.outputs.restore_best and best_epoch is not None:
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
                              best_val_accuracy=state["best_value"], model=self.model, monitor=self.outputs.monitor,
                              feature_cache_speedup=self.speedup, resumed_at=self.resumed_at,
                              output_dir=self.outputs.output_dir, log=self.log,
                              epoch_seconds=dict(recorder.epoch_seconds), precision=self.setup.precision,
                              precision_choice=self.precision_choice.as_dict(),
                              strategy=describe(self.strategy), policy=self.chosen.as_dict(),
                              evaluation=evaluation,
                              progressive=progressive.report(getattr(self, "sides", {}), recorder.epoch_seconds,
                                                             getattr(self.data, "image_size", None)))
