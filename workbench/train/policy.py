"""The training policy: what "auto" means for unfreezing, learning-rate decay, augmentation and BatchNorm.

Every rule here is read off the transfer benchmark (`python -m
workbench.bench.transfer --augment --extras`: a 0.4 M-parameter RegNetY
pretrained on a source task, then fine-tuned on new classes at 32 px for 12
epochs; final-epoch validation accuracy, one seed, minutes per run on 2 CPU
cores). `training_policy` is the one function that applies them; the recipes
and `wb.finetune(unfreeze="auto")` call it, and `metrics.json` records its
result.

Policies, augmentation off (accuracy, minutes):

    task          full        linear_probe  fine_tune    staged       scratch
    digits@5      0.760 0.34  0.488 0.08    0.660 0.37   0.620 0.48   0.408 0.33
    digits@30     0.896 0.31  0.612 0.07    0.840 0.34   0.816 0.56   0.664 0.32
    digits@100    0.968 0.36  0.820 0.09    0.952 0.48   0.956 0.66   0.936 0.43
    textures@30   0.700 0.29  0.517 0.07    0.700 0.34   0.658 0.60   0.333 0.37
    faces@30      0.925 0.34  0.863 0.08    0.875 0.31   0.850 0.49   0.825 0.36

Augmentation, policy full:

    task          none   flip,crop  crop   strong
    digits@5      0.760  0.540      0.712  0.352
    digits@30     0.896  0.732      0.856  0.600
    digits@100    0.968  0.896      0.948  0.692
    textures@30   0.700  0.717      0.758  0.525
    faces@30      0.925  0.875      0.837  0.800

Extras: BatchNorm re-estimation from scratch 0.452 / 0.808 / 0.940 / 0.667 /
0.938 (against 0.408 / 0.664 / 0.936 / 0.333 / 0.825 without); EMA on full
fine-tuning 0.776 / 0.884 / 0.976 / 0.725 / 0.938 (against 0.760 / 0.896 /
0.968 / 0.700 / 0.925) at 1.7x the time.

What follows:

- unfreeze="auto" with pretrained weights is full fine-tuning, every stage
  from epoch 0 at one rate (lr_decay 1): it won or tied on all five tasks.
  The staged schedule (the head for a third of the epochs, then stage by
  stage, decay 2.6) lost everywhere, by 0.14 at 5 labels per class and 0.01
  at 100, at 1.4-2x the time; fastai's fine_tune (2 head epochs, then all
  stages, decay 2.6) lost by 0.0-0.10. Both stay available as schedules
  (`unfreeze="0:head,2:all"`, `default_schedule(epochs)`, and `lr_decay` applies
  with any schedule given: 2.6 unless set); the gap closing with more labels is
  where they may pay off (much more data, larger models, bigger domain shift).
  The linear probe is 4x cheaper but 0.06-0.28 lower.
- From random initialization: every stage at one rate, and BatchNorm
  statistics re-estimated before each evaluation (`bn_refresh`): +0.00 to
  +0.33, and the textures task went from chance (0.333) to 0.667.
- augment="auto": none. Fine-tuning pretrained weights, it won on four of
  five tasks (mean 0.850 against 0.822 for crop, 0.752 for flip,crop, 0.594
  for strong RandAugment); flips cost the digits 0.07-0.22; textures gained
  0.06 from random crops. From random initialization, the custom recipe on the
  sample dataset (RegNetY-200MF, 128 px, 10 epochs, BatchNorm re-estimation
  on, seeds 0/1/2) scored 0.850/0.850/0.833 with none (mean 0.844) and
  0.917/0.800/0.850 with light (mean 0.856): even, within one of 60
  validation images, none the steadier. In runs this short augmentation
  gives little; longer runs were not measured.
- EMA, test-time augmentation, stochastic depth and progressive resizing are
  off unless asked: EMA's mean gain (+0.01) is within one seed's noise here.
"""
from __future__ import annotations

from dataclasses import dataclass

from workbench.data import augment as augmentation
from workbench.utils import checks

SCHEDULE_DECAY = 2.6     # lr_decay with a schedule the user gives (fastai's)


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

    def finetune_kwargs(self) -> dict:
        """The arguments of `wb.finetune` that carry this policy."""
        return {"unfreeze": self.unfreeze, "lr_decay": self.lr_decay, "augment": self.augment, "ema": self.ema,
                "tta": self.tta, "progressive": self.progressive, "bn_refresh": self.bn_refresh}

    def __str__(self):
        return (f"unfreeze {self.unfreeze}, lr_decay {self.lr_decay:g}, augment {self.augment}, ema {self.ema}, "
                f"tta {self.tta}, progressive {self.progressive}, bn_refresh {self.bn_refresh} ({self.reason})")


def auto_unfreeze(epochs: int, pretrained: bool) -> tuple[str, float, str]:
    """(schedule, lr_decay, why) of unfreeze="auto": every stage from epoch 0 at one rate (see module doc)."""
    checks.positive_int("epochs", epochs)
    if not pretrained:
        return "0:all", 1.0, "random initialization: every stage trains from epoch 0 at one rate"
    return "0:all", 1.0, ("pretrained: full fine-tuning, every stage from epoch 0 at one rate "
                          "(won the transfer benchmark against staged unfreezing and discriminative rates)")


def _flag(name, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return value


def training_policy(unfreeze="auto", epochs: int = 10, pretrained: bool = True, lr_decay="auto", *,
                    augment="auto", ema: bool = False, tta: bool = False, progressive: bool = False,
                    bn_refresh="auto") -> TrainingPolicy:
    """Every "auto" of a run resolved from what is known (pretrained or not, the number of epochs).

    unfreeze: "auto" or a schedule ("0:head,2:stage4,4:stage3+stage2"); lr_decay: "auto" (1 with the
    automatic schedule, SCHEDULE_DECAY with a schedule given) or a number >= 1, always 1 from random
    initialization; augment: "auto" or a spec of `workbench.data.augment`; bn_refresh: "auto" (from random
    initialization) or a bool. The figures behind each rule are in this module's docstring.
    """
    from workbench.train.unfreeze import format_schedule, parse_schedule
    schedule, decay, why = auto_unfreeze(epochs, pretrained)
    if unfreeze not in ("auto", "", None):
        parse_schedule(unfreeze)  # refuses a malformed schedule before any work
        given = unfreeze.strip() if isinstance(unfreeze, str) else format_schedule(unfreeze)
        resolved = given == schedule and lr_decay != "auto" and checks.lr_decay(lr_decay) == decay
        if not resolved:  # (a policy already resolved, as the recipes pass it, keeps its reason)
            schedule, decay, why = given, SCHEDULE_DECAY, "the schedule given"
    if lr_decay != "auto":
        decay = checks.lr_decay(lr_decay)
    if not pretrained and decay != 1.0:
        decay, why = 1.0, why + "; random initialization: one rate for every stage"
    aug = augmentation.parse(augment if augment is not None else "auto",
                             augmentation.AUTO)
    refresh = (not pretrained) if bn_refresh == "auto" else _flag("bn_refresh", bn_refresh)
    return TrainingPolicy(schedule, decay, aug, _flag("ema", ema), _flag("tta", tta),
                          _flag("progressive", progressive), refresh, why)
