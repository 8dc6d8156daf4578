"""The unfreezing schedule as a value: epoch -> stages made trainable from the start of that epoch.

`Schedule.parse` reads what a user gives (a string "0:head,2:stage4,4:stage3+stage2", a dict
{epoch: stage or [stages]}, or a Schedule) once, where it enters; everything downstream (the training
policy, `finetune`, `GradualUnfreezing`, the checkpoints' settings) takes the value.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from workbench.utils import checks
from workbench.models.contract import STAGES, stage_layers

EXAMPLE = "'0:head,2:stage4,4:stage3+stage2'"


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


def _text_items(text: str) -> list[tuple[int, tuple[str, ...], set[str]]]:
    """(epoch, stages, names written) of each entry of a string schedule."""
    if not text.strip():
        raise ValueError(f"Empty unfreezing schedule: expected e.g. {EXAMPLE}.")
    items = []
    for part in text.strip().split(","):
        if part.count(":") != 1:
            raise ValueError(f"Malformed schedule entry {part.strip()!r} in {text!r}: expected "
                             f"'epoch:stage' or 'epoch:stage+stage', e.g. {EXAMPLE}.")
        epoch, stages = part.split(":")
        if not re.fullmatch(r"\s*-?\d+\s*", epoch):
            raise ValueError(f"Malformed schedule entry {part.strip()!r} in {text!r}: "
                             f"{epoch.strip()!r} is not an epoch number.")
        where = f"schedule entry {part.strip()!r}"
        ep = _epoch(int(epoch), where)
        if ep in {e for e, *_ in items}:
            raise ValueError(f"Epoch {ep} appears twice in schedule {text!r}; join its stages with '+'.")
        names = stages.split("+")
        items.append((ep, _stage_list(names, where), {s.strip() for s in names}))
    return items


def _dict_items(mapping: dict) -> list[tuple[int, tuple[str, ...], set[str]]]:
    """(epoch, stages, names written) of each entry of a dict schedule."""
    if not mapping:
        raise ValueError("Empty unfreezing schedule: expected e.g. {0: 'head', 2: 'stage4'}.")
    return [(_epoch(k, f"schedule key {k!r}"), _stage_list(v, f"schedule[{k!r}]"),
             {v} if isinstance(v, str) else set(v)) for k, v in mapping.items()]


@dataclass(frozen=True)
class Schedule:
    """Epoch -> stages to unfreeze at its start (epochs count from 0; Keras' "Epoch 1/N" is epoch 0)."""

    steps: tuple[tuple[int, tuple[str, ...]], ...]
    named: frozenset = field(default=frozenset(), compare=False)  # stages named explicitly (not through 'all')

    @classmethod
    def parse(cls, value) -> Schedule:
        """A Schedule from "0:head,2:stage4,4:stage3+stage2" (`all` = every stage), a dict or a Schedule."""
        if isinstance(value, Schedule):
            return value
        if isinstance(value, str):
            items = _text_items(value)
        elif isinstance(value, dict):
            items = _dict_items(value)
        else:
            raise ValueError(f"Unfreezing schedule must be a dict or a string like '0:head,2:stage4', "
                             f"got {value!r}.")
        if 0 not in {e for e, *_ in items}:
            raise ValueError(f"Schedule {value!r} unfreezes nothing before epoch {min(e for e, *_ in items)}: "
                             "start it at epoch 0, e.g. '0:head,2:stage4'.")
        return cls(tuple(sorted((e, s) for e, s, _ in items)), frozenset().union(*(n for *_, n in items)))

    def __str__(self):
        """The canonical string, e.g. "0:head,2:stage4,4:stage3+stage2" (every stage at once: "all")."""
        return ",".join(f"{e}:{'all' if set(s) == set(STAGES) else '+'.join(s)}" for e, s in self.steps)

    def as_dict(self) -> dict[int, tuple[str, ...]]:
        """{epoch: stages unfrozen at its start}."""
        return dict(self.steps)

    def unfrozen_at(self, epoch: int) -> tuple[str, ...]:
        """The stages this schedule unfreezes at the start of `epoch` (none between its epochs)."""
        return dict(self.steps).get(epoch, ())

    def stages_at(self, epoch: int) -> tuple[str, ...]:
        """The stages trainable during `epoch` (everything unfrozen at or before it)."""
        out = {s for e, stages in self.steps if e <= epoch for s in stages}
        return tuple(s for s in reversed(STAGES) if s in out)

    @property
    def head_only_until(self) -> int | None:
        """The first epoch at which more than the head trains; None when only the head ever trains."""
        return next((e for e, _ in self.steps if set(self.stages_at(e)) - {"head"}), None)

    def check(self, model, epochs: int | None = None) -> Schedule:
        """This schedule, after checking it against a model (and a run length): errors before training."""
        missing = sorted({s for _, stages in self.steps for s in stages if not stage_layers(model, s)},
                         key=STAGES.index)
        missing = [s for s in missing if s in self.named]  # 'all' may cover absent stages (no head)
        if missing:
            raise ValueError(f"The schedule unfreezes stage(s) {missing}, which model '{model.name}' does not have.")
        if not any(stage_layers(model, s) for _, stages in self.steps for s in stages):
            raise ValueError(f"Schedule '{self}' unfreezes no layer of model '{model.name}'.")
        late = [e for e, _ in self.steps if epochs is not None and e >= epochs]
        if late:
            raise ValueError(f"The schedule unfreezes at epoch(s) {late}, but the run has {epochs} epochs "
                             f"(0 to {epochs - 1}). Shorten the schedule or train longer.")
        return self


def parse_schedule(schedule) -> dict[int, tuple[str, ...]]:
    """Epoch -> stages to unfreeze at its start, from a dict or a string like "0:head,2:stage4,4:stage3+stage2"."""
    return Schedule.parse(schedule).as_dict()


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
