"""Staged gradual unfreezing: a schedule of epoch -> stages, and the callback that applies it.

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

import re
from dataclasses import dataclass

import keras

from workbench.utils import checks
from workbench.models.contract import STAGES, stage_layers, trainable_candidates
from workbench.train.discriminative import inner_discriminative


def _stage_list(value, where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple, set)) else None
    if not names:
        raise ValueError(f"{where}: expected a stage name or a list of stage names, got {value!r}. "
                         f"Stages: {', '.join(STAGES)} (or 'all').")
    out = set()
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"{where}: stage names must be strings, got {name!r}.")
        name = name.strip()
        if name == "all":
            out.update(STAGES)
        elif name in STAGES:
            out.add(name)
        else:
            raise ValueError(f"{where}: unknown stage {name!r}. Stages are {', '.join(STAGES)}, or 'all'.")
    return tuple(s for s in reversed(STAGES) if s in out)


def _epoch(value, where: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: epoch must be a non-negative integer, got {value!r}.")
    if value < 0:
        raise ValueError(f"{where}: epoch {value} is negative; epochs count from 0.")
    return value


def parse_schedule(schedule) -> dict[int, tuple[str, ...]]:
    """Epoch -> stages to unfreeze at its start, from a dict or a string like "0:head,2:stage4,4:stage3+stage2".

    Epochs count from 0 (Keras' "Epoch 1/N" is epoch 0). `all` means every
    stage. The schedule must start at epoch 0 (else nothing would train).
    """
    if isinstance(schedule, str):
        text = schedule.strip()
        if not text:
            raise ValueError("Empty unfreezing schedule: expected e.g. '0:head,2:stage4,4:stage3+stage2'.")
        items = []
        for part in text.split(","):
            if part.count(":") != 1:
                raise ValueError(f"Malformed schedule entry {part.strip()!r} in {schedule!r}: expected "
                                 "'epoch:stage' or 'epoch:stage+stage', e.g. '0:head,2:stage4,4:stage3+stage2'.")
            epoch, stages = part.split(":")
            if not re.fullmatch(r"\s*-?\d+\s*", epoch):
                raise ValueError(f"Malformed schedule entry {part.strip()!r} in {schedule!r}: "
                                 f"{epoch.strip()!r} is not an epoch number.")
            where = f"schedule entry {part.strip()!r}"
            ep = _epoch(int(epoch), where)
            if ep in dict(items):
                raise ValueError(f"Epoch {ep} appears twice in schedule {schedule!r}; join its stages with '+'.")
            items.append((ep, _stage_list([s for s in stages.split("+")], where)))
    elif isinstance(schedule, dict):
        if not schedule:
            raise ValueError("Empty unfreezing schedule: expected e.g. {0: 'head', 2: 'stage4'}.")
        items = [(_epoch(k, f"schedule key {k!r}"), _stage_list(v, f"schedule[{k!r}]")) for k, v in schedule.items()]
    else:
        raise ValueError(f"Unfreezing schedule must be a dict or a string like '0:head,2:stage4', got {schedule!r}.")
    out = dict(sorted(items))
    if 0 not in out:
        raise ValueError(f"Schedule {schedule!r} unfreezes nothing before epoch {min(out)}: start it at epoch 0, "
                         "e.g. '0:head,2:stage4'.")
    return out


def default_schedule(epochs: int) -> dict[int, list[str]]:
    """Head for the first ~third, then stage4, stage3+stage2, stage1+stem over the rest."""
    epochs = checks.positive_int("epochs", epochs)
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


@dataclass(frozen=True)
class UnfreezePolicy:
    """What to unfreeze when, and the discriminative decay: `finetune(unfreeze=schedule, lr_decay=lr_decay)`."""

    schedule: str  # "0:head,3:stage4,..."
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
    from workbench.train.policy import training_policy

    chosen = training_policy(unfreeze, epochs, pretrained, lr_decay, augment="none")
    return UnfreezePolicy(chosen.unfreeze, chosen.lr_decay, chosen.reason)


def format_schedule(schedule) -> str:
    """The string form of a schedule ("0:head,2:stage4")."""
    return ",".join(f"{e}:{'+'.join(s)}" for e, s in parse_schedule(schedule).items())


def stages_at(schedule, epoch: int) -> tuple[str, ...]:
    """The stages trainable during `epoch` (everything unfrozen at or before it)."""
    out = {s for e, stages in parse_schedule(schedule).items() if e <= epoch for s in stages}
    return tuple(s for s in reversed(STAGES) if s in out)


def check_schedule(schedule, model, epochs: int | None = None) -> dict[int, tuple[str, ...]]:
    """Parse `schedule` and check it against a model (and a run length): errors before training."""
    parsed = parse_schedule(schedule)
    missing = sorted({s for stages in parsed.values() for s in stages if not stage_layers(model, s)},
                     key=STAGES.index)
    explicit = {s for v in (schedule.values() if isinstance(schedule, dict) else [schedule]) for s in
                (re.split(r"[,:+]", v) if isinstance(v, str) else v)}
    missing = [s for s in missing if s in explicit]  # 'all' may cover absent stages (no head)
    if missing:
        raise ValueError(f"The schedule unfreezes stage(s) {missing}, which model '{model.name}' does not have.")
    if not any(stage_layers(model, s) for stages in parsed.values() for s in stages):
        raise ValueError(f"Schedule {schedule!r} unfreezes no layer of model '{model.name}'.")
    if epochs is not None:
        late = [e for e in parsed if e >= epochs]
        if late:
            raise ValueError(f"The schedule unfreezes at epoch(s) {late}, but the run has {epochs} epochs "
                             f"(0 to {epochs - 1}). Shorten the schedule or train longer.")
    return parsed


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
    the optimizer state and the History. `events` lists every unfreeze as
    {"epoch": e, "stages": [...]}; `log` holds the printed lines.
    """

    def __init__(self, schedule, verbose: int = 1, epochs: int | None = None):
        super().__init__()
        self.schedule = parse_schedule(schedule)
        self.verbose = verbose
        self.epochs = epochs
        self.events: list[dict] = []
        self.log: list[str] = []
        self.current: tuple[str, ...] | None = None

    def _say(self, msg):
        self.log.append(msg)
        if self.verbose:
            print(msg, flush=True)

    def set_model(self, model):
        super().set_model(model)
        check_schedule(self.schedule, model)

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

    def apply(self, epoch: int) -> bool:
        """Set the trainable stages for `epoch`; True if anything changed."""
        target = stages_at(self.schedule, epoch)
        if target == self.current:
            return False
        first = self.current is None
        newly = [s for s in target if s not in (self.current or ())]
        set_trainable_stages(self.model, target)
        self.current = target
        n = f"/{self.epochs}" if self.epochs else ""
        if epoch in self.schedule:
            new = [s for s in self.schedule[epoch] if s in newly and stage_layers(self.model, s)]
            self.events.append({"epoch": epoch, "stages": new})
            rates = ", ".join(f"{s} (lr x{self._multiplier(s):.3g})" for s in new)
            frozen = [s for s in STAGES if s not in target and stage_layers(self.model, s)]
            tail = f"; frozen: {', '.join(frozen)}" if frozen else ""
            self._say(f"Epoch {epoch + 1}{n}: unfroze {rates}{tail}")
        elif first:
            self._say(f"Epoch {epoch + 1}{n}: resuming with trainable stages {', '.join(target)}")
        return True

    def on_epoch_begin(self, epoch, logs=None):
        if self.apply(epoch):
            # Keras caches the traced train step; re-trace it for the new trainable set.
            self.model.make_train_function(force=True)
            if hasattr(self.model, "_compiled_trainable_state"):
                self.model._compiled_trainable_state = {
                    layer: layer.trainable for layer in self.model._flatten_layers()}
