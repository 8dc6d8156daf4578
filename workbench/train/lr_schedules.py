"""Learning-rate schedules: linear warmup + cosine decay, and the one-cycle policy.

Both are `keras.optimizers.schedules.LearningRateSchedule`s written with
`keras.ops`, so they run inside compiled (graph / XLA) `fit`, and they are
registered serializable: a model saved with `model.save("m.keras")` loads back
with `keras.models.load_model` and no `custom_objects` (once `workbench` is
imported). Called with an array of steps they return the array of rates, which
is what `plot_lr_schedule` uses.
"""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

__all__ = ["WarmupCosine", "OneCycle"]


def _positive_number(name: str, value, schedule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{schedule}: {name} must be a positive number, got {value!r}.")
    return float(value)


def _step_count(name: str, value, schedule: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{schedule}: {name} must be an integer >= {minimum}, got {value!r}. "
                         "Steps are optimizer updates: epochs * batches per epoch.")
    return int(value)


def _cosine(start, end, fraction):
    """Cosine interpolation from `start` (fraction 0) to `end` (fraction 1)."""
    return end + (start - end) * 0.5 * (1.0 + ops.cos(math.pi * fraction))


@keras.saving.register_keras_serializable(package="workbench")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak_lr`, then cosine decay to `peak_lr * final_lr_frac`.

    lr(0) = 0, lr(warmup_steps) = peak_lr, lr(total_steps) = peak_lr * final_lr_frac,
    constant after `total_steps`. With `warmup_steps=0` it starts at `peak_lr`.
    """

    def __init__(self, peak_lr, total_steps, warmup_steps=0, final_lr_frac=0.0):
        name = "WarmupCosine"
        self.peak_lr = _positive_number("peak_lr", peak_lr, name)
        self.total_steps = _step_count("total_steps", total_steps, name)
        self.warmup_steps = _step_count("warmup_steps", warmup_steps, name, minimum=0)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"{name}: warmup_steps ({warmup_steps}) must be smaller than total_steps "
                             f"({total_steps}); a typical warmup is 5-10% of the steps.")
        if isinstance(final_lr_frac, bool) or not isinstance(final_lr_frac, numbers.Real) \
                or not 0.0 <= final_lr_frac <= 1.0:
            raise ValueError(f"{name}: final_lr_frac must be in [0, 1] (the final rate as a fraction "
                             f"of peak_lr), got {final_lr_frac!r}.")
        self.final_lr_frac = float(final_lr_frac)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.peak_lr
        final = peak * self.final_lr_frac
        warmup = float(self.warmup_steps)
        if self.warmup_steps:
            warm = peak * ops.minimum(step / warmup, 1.0)
        else:
            warm = ops.full_like(step, peak)
        fraction = ops.clip((step - warmup) / float(self.total_steps - self.warmup_steps), 0.0, 1.0)
        decay = _cosine(peak, final, fraction)
        return ops.where(step < warmup, warm, decay)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "final_lr_frac": self.final_lr_frac}

    def __repr__(self):
        return (f"WarmupCosine(peak_lr={self.peak_lr:g}, total_steps={self.total_steps}, "
                f"warmup_steps={self.warmup_steps}, final_lr_frac={self.final_lr_frac:g})")


@keras.saving.register_keras_serializable(package="workbench")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """The one-cycle policy (Smith 2018; PyTorch `OneCycleLR`, cosine annealing, two phases).

    Cosine rise from `max_lr / div_factor` to `max_lr` at step `pct_start * total_steps - 1`,
    then cosine fall to `max_lr / div_factor / final_div_factor` at step `total_steps - 1`
    (constant after).
    """

    def __init__(self, max_lr, total_steps, pct_start=0.25, div_factor=25.0, final_div_factor=1e4):
        name = "OneCycle"
        self.max_lr = _positive_number("max_lr", max_lr, name)
        self.total_steps = _step_count("total_steps", total_steps, name, minimum=2)
        if isinstance(pct_start, bool) or not isinstance(pct_start, numbers.Real) or not 0.0 < pct_start < 1.0:
            raise ValueError(f"{name}: pct_start must be in (0, 1) (the fraction of steps spent "
                             f"increasing the rate), got {pct_start!r}.")
        self.pct_start = float(pct_start)
        self.div_factor = _positive_number("div_factor", div_factor, name)
        self.final_div_factor = _positive_number("final_div_factor", final_div_factor, name)

    @property
    def initial_lr(self) -> float:
        return self.max_lr / self.div_factor

    @property
    def final_lr(self) -> float:
        return self.initial_lr / self.final_div_factor

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak_step = self.pct_start * self.total_steps - 1.0
        last_step = float(self.total_steps - 1)
        if peak_step > 0:
            up = _cosine(self.initial_lr, self.max_lr, ops.clip(step / peak_step, 0.0, 1.0))
        else:  # too few steps for a rising phase: start at the peak
            up = ops.full_like(step, self.max_lr)
        peak_step = max(peak_step, 0.0)
        span = max(last_step - peak_step, 1e-9)
        down = _cosine(self.max_lr, self.final_lr, ops.clip((step - peak_step) / span, 0.0, 1.0))
        return ops.where(step <= peak_step, up, down)

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps, "pct_start": self.pct_start,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}

    def __repr__(self):
        return (f"OneCycle(max_lr={self.max_lr:g}, total_steps={self.total_steps}, "
                f"pct_start={self.pct_start:g}, div_factor={self.div_factor:g}, "
                f"final_div_factor={self.final_div_factor:g})")
