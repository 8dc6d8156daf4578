"""The training policy: what "auto" means for unfreezing, learning-rate decay, augmentation and BatchNorm.

Every rule is read off the transfer benchmark (`python -m workbench.bench.transfer --augment --extras`;
its tables and the reasoning are in docs/training-policy.md). `training_policy` is the one function
that applies them; the recipes and `wb.finetune` call it once per run, and `metrics.json` records it.

- unfreeze="auto" is full fine-tuning, every stage from epoch 0 at one rate (lr_decay 1), pretrained
  or not: it won or tied on all five tasks; staged schedules and fastai's fine_tune lost by 0.0-0.14
  at 1.4-2x the time. A schedule given trains with lr_decay 2.6 (SCHEDULE_DECAY) unless set.
- From random initialization: one rate for every stage, and BatchNorm statistics re-estimated before
  each evaluation (`bn_refresh`): textures went from chance (0.333) to 0.667.
- augment="auto" is none (`workbench.data.augment.AUTO`): it won on four of five tasks.
- EMA, test-time augmentation, stochastic depth and progressive resizing are off unless asked: EMA's
  gain (+0.01) is within one seed's noise.
"""
from __future__ import annotations

from dataclasses import dataclass

from workbench.data import augment as augmentation
from workbench.utils import checks
from workbench.train.schedule import Schedule

SCHEDULE_DECAY = 2.6     # lr_decay with a schedule the user gives (fastai's)


@dataclass(frozen=True)
class TrainingPolicy:
    """A run's training policy, every "auto" resolved; `as_dict()` is what metrics.json records."""

    unfreeze: Schedule
    lr_decay: float
    augment: augmentation.Augment
    ema: bool
    tta: bool
    progressive: bool
    bn_refresh: bool
    reason: str
    pretrained: bool = True  # what the policy was resolved for

    def as_dict(self) -> dict:
        return {"unfreeze": str(self.unfreeze), "lr_decay": self.lr_decay, "augment": str(self.augment),
                "ema": self.ema, "tta": self.tta, "progressive": self.progressive,
                "bn_refresh": self.bn_refresh, "reason": self.reason}

    def finetune_kwargs(self) -> dict:
        """The arguments of `wb.finetune` that carry this policy (resolved: finetune uses it as it is)."""
        return {"policy": self}

    def __str__(self):
        return (f"unfreeze {self.unfreeze}, lr_decay {self.lr_decay:g}, augment {self.augment}, ema {self.ema}, "
                f"tta {self.tta}, progressive {self.progressive}, bn_refresh {self.bn_refresh} ({self.reason})")


def auto_unfreeze(epochs: int, pretrained: bool) -> tuple[Schedule, float, str]:
    """(schedule, lr_decay, why) of unfreeze="auto": every stage from epoch 0 at one rate (see module doc)."""
    checks.positive_int("epochs", epochs)
    if not pretrained:
        return Schedule.parse("0:all"), 1.0, "random initialization: every stage trains from epoch 0 at one rate"
    return Schedule.parse("0:all"), 1.0, ("pretrained: full fine-tuning, every stage from epoch 0 at one rate "
                          "(won the transfer benchmark against staged unfreezing and discriminative rates)")


def _flag(name, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return value


def training_policy(unfreeze="auto", epochs: int = 10, pretrained: bool = True, lr_decay="auto", *,
                    augment="auto", ema: bool = False, tta: bool = False, progressive: bool = False,
                    bn_refresh="auto") -> TrainingPolicy:
    """Every "auto" of a run resolved from what is known (pretrained or not, the number of epochs).

    unfreeze: "auto" or a schedule ("0:head,2:stage4,4:stage3+stage2", a dict or a `Schedule`); lr_decay: "auto"
    (1 with the automatic schedule, SCHEDULE_DECAY with a schedule given) or a number >= 1, always 1 from random
    initialization; augment: "auto" or a spec of `workbench.data.augment`; bn_refresh: "auto" (from random
    initialization) or a bool. The figures behind each rule are in this module's docstring. The result is
    resolved: `wb.finetune(..., policy=policy)` uses it as it is.
    """
    schedule, decay, why = auto_unfreeze(epochs, pretrained)
    if unfreeze not in ("auto", "", None):
        schedule, decay, why = Schedule.parse(unfreeze), SCHEDULE_DECAY, "the schedule given"
    if lr_decay != "auto":
        decay = checks.lr_decay(lr_decay)
    if not pretrained and decay != 1.0:
        decay, why = 1.0, why + "; random initialization: one rate for every stage"
    aug = augmentation.parse(augment if augment is not None else "auto", augmentation.AUTO)
    refresh = (not pretrained) if bn_refresh == "auto" else _flag("bn_refresh", bn_refresh)
    return TrainingPolicy(schedule, decay, aug, _flag("ema", ema), _flag("tta", tta),
                          _flag("progressive", progressive), refresh, why, bool(pretrained))
