"""Staged gradual unfreezing: the callback that applies a `Schedule`, and the unfreezing policy.

Freezing is `layer.trainable = False` on a stage's layers: no gradients are
computed for them, and in Keras 3 a frozen BatchNormalization layer runs in
inference mode, so its moving statistics stay untouched. At the start of a
scheduled epoch the callback flips the flags and rebuilds the model's
`train_function` (a re-trace of the tf.function; under XLA a recompile), which
is how Keras picks up a changed trainable set inside `fit`. The optimizer,
its state (moments, iteration count, schedule position) and the History are
the same objects before and after.

A Keras 3 optimizer only updates variables it was built with, so it must be
built while every stage is trainable: `fit` on a freshly built, fully
trainable model does that on the first call (the callback freezes after),
and `DiscriminativeOptimizer(opt, model)` always does it; an optimizer still
unbuilt when `fit` starts is built here for every stage. One already built on
a subset is reported before the first step.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras

from workbench.utils.say import Say
from workbench.models.contract import STAGES, stage_layers, trainable_candidates
from workbench.train.discriminative import inner_discriminative
from workbench.train.policy import training_policy
from workbench.train.schedule import Schedule


@dataclass(frozen=True)
class UnfreezePolicy:
    """What to unfreeze when, and the discriminative decay: `finetune(unfreeze=schedule, lr_decay=lr_decay)`."""

    schedule: Schedule
    lr_decay: float
    reason: str

    def __str__(self):
        return f"unfreeze {self.schedule}, lr_decay {self.lr_decay:g} ({self.reason})"


def unfreeze_policy(unfreeze="auto", epochs: int = 10, pretrained: bool = True,
                    lr_decay="auto") -> UnfreezePolicy:
    """The unfreezing part of `workbench.train.policy.training_policy`: the user's schedule, or what "auto" means.

    - "auto" (or None, ""): every stage from epoch 0 at one rate, pretrained or
      not: the transfer benchmark's winner (figures in `workbench.train.policy`).
    - `lr_decay`: "auto" is 1 with the automatic schedule and 2.6 with a schedule
      given; it applies to pretrained weights only: from random initialization
      the lower stages hold nothing worth protecting, so every stage trains at
      one rate (lr_decay 1), whatever the schedule.
    """
    chosen = training_policy(unfreeze, epochs, pretrained, lr_decay, augment="none")
    return UnfreezePolicy(chosen.unfreeze, chosen.lr_decay, chosen.reason)


def set_trainable_stages(model, stages) -> None:
    """Make exactly `stages` trainable (the other stages frozen, their BatchNorm in inference mode)."""
    for stage in STAGES:
        for layer in stage_layers(model, stage):
            layer.trainable = stage in stages


def optimizer_missing_variables(model) -> list:
    """Variables that may train but the (built) optimizer was not built with."""
    opt = getattr(model, "optimizer", None)
    if opt is None or not opt.built:
        return []
    known = getattr(opt, "_trainable_variables_indices", {})
    return [v for v in trainable_candidates(model) if opt._var_key(v) not in known]


class GradualUnfreezing(keras.callbacks.Callback):
    """Unfreeze stages at scheduled epochs: {0: "head", 2: "stage4", 4: ["stage3", "stage2"]}.

    Until a stage's epoch it is frozen (BatchNorm statistics unchanged). The
    change happens at the start of the epoch inside the running `fit`, keeping
    the optimizer state and the History. `schedule` is a string, a dict or a
    `Schedule`. `events` lists every unfreeze as {"epoch": e, "stages": [...]};
    `log` holds the printed lines (those of `say`, a `Say`, when given).
    """

    def __init__(self, schedule, verbose: int = 1, epochs: int | None = None, say: Say | None = None):
        super().__init__()
        self.schedule = Schedule.parse(schedule)
        self.epochs = epochs
        self._say = say or Say(verbose)
        self.log = self._say.lines
        self.events: list[dict] = []
        self.current: tuple[str, ...] | None = None

    def set_model(self, model):
        super().set_model(model)
        self.schedule.check(model)

    def _multiplier(self, stage) -> float:
        opt = inner_discriminative(getattr(self.model, "optimizer", None))
        return opt.multipliers.get(stage, 1.0) if opt is not None else 1.0

    def on_train_begin(self, logs=None):
        opt = getattr(self.model, "optimizer", None)
        if opt is not None and not opt.built:
            # Keras would build it lazily on the first step, for the stages trainable then only.
            opt.build(trainable_candidates(self.model))
        missing = optimizer_missing_variables(self.model)
        if missing:
            raise ValueError(
                f"The optimizer was built while some layers were frozen, so it cannot update "
                f"{len(missing)} variable(s) that the schedule will unfreeze (e.g. {missing[0].path}). "
                "Keras 3 optimizers only update the variables they were built with. Use "
                "wb.DiscriminativeOptimizer(optimizer, model) (built for every stage), or compile a "
                "fully trainable model and let GradualUnfreezing do the freezing.")

    def announce(self, epoch: int, newly=None) -> None:
        """Record and say the unfreezing scheduled at `epoch` (of the stages in `newly`, default all)."""
        target = self.schedule.stages_at(epoch)
        new = [s for s in self.schedule.unfrozen_at(epoch)
               if (newly is None or s in newly) and stage_layers(self.model, s)]
        self.events.append({"epoch": epoch, "stages": new})
        rates = ", ".join(f"{s} (lr x{self._multiplier(s):.3g})" for s in new)
        frozen = [s for s in STAGES if s not in target and stage_layers(self.model, s)]
        tail = f"; frozen: {', '.join(frozen)}" if frozen else ""
        self._say(f"Epoch {epoch + 1}{self._of_n}: unfroze {rates}{tail}")

    @property
    def _of_n(self) -> str:
        return f"/{self.epochs}" if self.epochs else ""

    def apply(self, epoch: int) -> bool:
        """Set the trainable stages for `epoch`; True if anything changed."""
        target = self.schedule.stages_at(epoch)
        if target == self.current:
            return False
        first = self.current is None
        newly = [s for s in target if s not in (self.current or ())]
        set_trainable_stages(self.model, target)
        self.current = target
        if self.schedule.unfrozen_at(epoch):
            self.announce(epoch, newly)
        elif first:
            self._say(f"Epoch {epoch + 1}{self._of_n}: resuming with trainable stages {', '.join(target)}")
        return True

    def on_epoch_begin(self, epoch, logs=None):
        if self.apply(epoch):
            # Keras caches the traced train step; re-trace it for the new trainable set.
            self.model.make_train_function(force=True)
            if hasattr(self.model, "_compiled_trainable_state"):
                self.model._compiled_trainable_state = {
                    layer: layer.trainable for layer in self.model._flatten_layers()}
