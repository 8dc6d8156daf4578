"""The training policy: what "auto" means for unfreezing, learning-rate decay, augmentation and the extras.

PLACEHOLDER: the rules below are rewritten from the transfer benchmark's figures.
"""
from __future__ import annotations

from dataclasses import dataclass

from workbench import augment as augmentation
from workbench import checks


@dataclass(frozen=True)
class TrainingPolicy:
    """A run's training policy, every "auto" resolved; `as_dict()` is what metrics.json records."""

    unfreeze: str
    lr_decay: float
    augment: augmentation.Augment
    ema: bool
    tta: bool
    progressive: bool
    bn_refresh: bool
    reason: str

    def as_dict(self) -> dict:
        return {"unfreeze": self.unfreeze, "lr_decay": self.lr_decay, "augment": str(self.augment),
                "ema": self.ema, "tta": self.tta, "progressive": self.progressive,
                "bn_refresh": self.bn_refresh, "reason": self.reason}

    def __str__(self):
        return (f"unfreeze {self.unfreeze}, lr_decay {self.lr_decay:g}, augment {self.augment}, ema {self.ema}, "
                f"tta {self.tta}, progressive {self.progressive}, bn_refresh {self.bn_refresh} ({self.reason})")


def auto_unfreeze(epochs: int, pretrained: bool, num_train: int | None = None) -> tuple[str, float, str]:
    """(schedule, lr_decay, why) of unfreeze="auto"."""
    from workbench.unfreeze import default_schedule, format_schedule
    if not pretrained:
        return "0:all", 1.0, "random initialization: every stage trains from epoch 0 at one rate"
    return format_schedule(default_schedule(epochs)), 2.6, "pretrained: the head first, then stage by stage"


def auto_augment(num_train: int | None = None, image_size: int | None = None, pretrained=None) -> str:
    """What augment="auto" means."""
    return "light"


def auto_bn_refresh(pretrained: bool) -> bool:
    return not pretrained


def _flag(name, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return value


def training_policy(unfreeze="auto", epochs: int = 10, pretrained: bool = True, lr_decay="auto", *,
                    augment="auto", ema: bool = False, tta: bool = False, progressive: bool = False,
                    bn_refresh="auto", num_train: int | None = None, image_size: int | None = None) -> TrainingPolicy:
    """Every "auto" of a run resolved from what is known: pretrained or not, dataset size, image size."""
    from workbench.unfreeze import format_schedule, parse_schedule
    epochs = checks.positive_int("epochs", epochs)
    schedule, decay, why = auto_unfreeze(epochs, pretrained, num_train)
    if unfreeze not in ("auto", "", None):
        parse_schedule(unfreeze)
        schedule = unfreeze.strip() if isinstance(unfreeze, str) else format_schedule(unfreeze)
        why = "the schedule given"
    if lr_decay != "auto":
        decay = checks.lr_decay(lr_decay)
    if not pretrained:
        decay = 1.0
        why += "; random initialization: one rate for every stage" if why == "the schedule given" else ""
    aug = augmentation.parse(augment if augment is not None else "auto",
                             auto_augment(num_train, image_size, pretrained))
    refresh = auto_bn_refresh(pretrained) if bn_refresh == "auto" else _flag("bn_refresh", bn_refresh)
    return TrainingPolicy(schedule, decay, aug, _flag("ema", ema), _flag("tta", tta),
                          _flag("progressive", progressive), refresh, why)
