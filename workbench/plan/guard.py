"""`BudgetGuard`: the callback that keeps a planned run inside its budget (`Plan.guard()` makes it)."""
from __future__ import annotations

import time

import keras
import numpy as np


class BudgetGuard(keras.callbacks.Callback):
    """Cuts the remaining epochs when, at the recent pace, the plan would overrun the budget.

    The first epoch (which traces the model) is judged only when the budget is already spent; from the
    second on, the pace is the median of the last three epochs, and the number of epochs that fit is
    recomputed after each one, so a passing slowdown that ends gives the epochs back. The time kept for
    the report (`reserve` seconds, priced by the same profile as the epochs) grows by the factor the
    epochs run slower than planned: a machine busier than when measured is busier for the report too.
    """

    def __init__(self, plan, reserve: float):
        super().__init__()
        self.plan, self.reserve = plan, reserve
        self.stop_after = plan.epochs
        self.adapted: list[str] = []
        self._t0 = 0.0
        self._paces: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self._paces.append(now - self._t0)
        pace = float(np.median(self._paces[1:][-3:])) if len(self._paces) > 1 else self._paces[0]
        planned = self.plan.chosen.phases["epochs"] / self.plan.epochs
        slowdown = max(1.0, pace / planned) if len(self._paces) > 1 and planned > 0 else 1.0
        left = self.plan.deadline - self.reserve * slowdown - now
        if left <= 0:
            affordable = epoch + 1
        elif len(self._paces) == 1:
            affordable = self.stop_after
        else:
            affordable = min(self.plan.epochs, epoch + 1 + int(left // pace))
        if affordable != self.stop_after:
            msg = (f"Epochs take {pace:.1f} s (planned {planned:.1f} s) and {max(left, 0):.0f} s are left before "
                   f"the report ({self.reserve * slowdown:.0f} s kept for it) after epoch {epoch + 1}: " + (
                       f"training stops after epoch {affordable} of {self.plan.epochs} to finish within "
                       f"{self.plan.budget_minutes:g} min." if affordable < self.plan.epochs else
                       f"back on plan, all {self.plan.epochs} epochs fit."))
            self.adapted.append(msg)
            print(msg, flush=True)
            self.stop_after = affordable
        if epoch + 1 >= self.stop_after:
            self.model.stop_training = True
