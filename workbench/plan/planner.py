"""`wb.plan`: the most accurate RegNet fine-tune that fits a time budget on this machine.

The machine is measured once and cached (`machine`), every phase of every
candidate priced by the cost model (`costs`) and scored by its expected top-1
(`scoring`); the best that fits the budget (minutes minus the time spent
measuring, less a margin) is the `Plan`. `Plan.table()` shows its phases with
predicted seconds and the runners-up with their scores; `Plan.guard()` keeps
the run inside the budget (`guard`). Figures: docs/budget.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from workbench.models.design import PUBLISHED, complexity, resolve_variant
from workbench.plan import costs
from workbench.plan.guard import BudgetGuard
from workbench.plan.images import decode_seconds, images_side
from workbench.plan.machine import Machine, measure
from workbench.plan.scoring import HEADER, MAX_EPOCHS, Candidate, candidates_for, tau
from workbench.utils import checks
from workbench.utils.say import Say

# Every RegNetX and RegNetY with published ImageNet weights (the paper's sizes and timm's torchvision-shaped
# ones): the families the probes measure. RegNetZ (depthwise-heavy, costlier per multiply-add on a CPU) is
# planned only when named in `candidates`.
CANDIDATES = tuple(v for v in PUBLISHED if v.startswith(("regnetx_", "regnety_")))
SIZES = (64, 96, 128, 160, 192, 224, 256, 288, 320, 384)
MARGIN = 0.92  # plan to 92% of the budget: the cost model's errors measured -8% to +16% (docs/budget.md)


@dataclass
class Plan:
    """The chosen run: `variant`, `weights`, `image_size`, `batch_size`, `epochs`, `unfreeze`, and why."""

    chosen: Candidate
    budget_minutes: float
    measured_seconds: float
    started: float  # time.perf_counter() when planning began: the budget's clock
    runners_up: list
    refused: list
    machine: Machine
    notes: list = field(default_factory=list)
    laps: dict = field(default_factory=dict)  # actual seconds of each phase, as `lap` records them
    _guard: BudgetGuard | None = None
    _last: float | None = None

    variant = property(lambda self: self.chosen.variant)
    weights = property(lambda self: self.chosen.weights)
    image_size = property(lambda self: self.chosen.image_size)
    batch_size = property(lambda self: self.chosen.batch_size)
    epochs = property(lambda self: self.chosen.epochs)
    unfreeze = property(lambda self: self.chosen.unfreeze)

    @property
    def deadline(self) -> float:
        return self.started + self.budget_minutes * 60

    @property
    def predicted_seconds(self) -> float:
        return self.measured_seconds + self.chosen.seconds

    def table(self) -> str:
        c = self.chosen
        training = ("linear probe (head only, on backbone features computed once)" if c.unfreeze == "0:head"
                    else "full fine-tuning (every stage from epoch 0, the training policy)")
        probe = f" - linear probe {c.probe_cost:.1f}" if c.probe_cost else ""
        lines = [f"Plan for {self.budget_minutes:g} min on this machine ({self.machine.precision}):",
                 f"  {c.variant}, weights {c.weights or 'none (random initialization)'}, {c.image_size} px, "
                 f"batch {c.batch_size}, {c.epochs} epochs, {training}",
                 f"  score {c.score:.1f} = prior {c.prior:.1f} ({c.reason}) - resolution {c.resolution:.1f} "
                 f"- under-training {c.undertrained:.1f}" + probe,
                 "", f"  {'phase':<12} {'predicted':>10}",
                 f"  {'measuring':<12} {self.measured_seconds:>9.0f}s"]
        lines += [f"  {name:<12} {sec:>9.0f}s" for name, sec in c.phases.items()]
        lines += [f"  {'total':<12} {self.predicted_seconds:>9.0f}s of {self.budget_minutes * 60:.0f}s", "",
                  "Runners-up (best of each variant; score = prior - resolution - under-training - probe):",
                  "  " + HEADER] + ["  " + r.row() for r in self.runners_up]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self):
        return self.table()

    def finetune_kwargs(self) -> dict:
        """The arguments of `wb.finetune` that carry the plan (epochs, unfreeze, pretrained, the guard)."""
        return {"epochs": self.epochs, "unfreeze": self.unfreeze, "pretrained": self.weights is not None,
                "callbacks": [self.guard()]}

    def guard(self, reserve: float | None = None) -> BudgetGuard:
        """The callback that cuts the remaining epochs when the run falls behind the budget."""
        self._guard = BudgetGuard(self, self.chosen.phases["report"] if reserve is None else reserve)
        return self._guard

    def lap(self, phase: str) -> float:
        """Record the seconds since planning ended (or the last lap) as the actual time of `phase`."""
        now = time.perf_counter()
        self.laps[phase] = now - (self._last if self._last is not None else self.started + self.measured_seconds)
        self._last = now
        return self.laps[phase]

    def predicted(self) -> dict:
        """Predicted seconds by the phases a recipe laps: measuring, setup, build, training, report, total."""
        phases = dict(self.chosen.phases)
        return {"measuring": self.measured_seconds, "setup": phases.pop("setup"), "build": phases.pop("build"),
                "report": phases.pop("report"), "training": sum(phases.values()), "total": self.predicted_seconds}

    def record(self, result=None) -> dict:
        """The plan, its predicted and (after `lap`s) actual seconds, and any adaptation: for metrics.json."""
        c = self.chosen
        out = {"budget_minutes": self.budget_minutes, "variant": c.variant, "weights": c.weights,
               "image_size": c.image_size, "batch_size": c.batch_size, "epochs": c.epochs, "unfreeze": c.unfreeze,
               "score": round(c.score, 2), "prior": c.prior, "resolution": round(c.resolution, 2),
               "undertrained": round(c.undertrained, 2), "linear_probe": c.probe_cost, "reason": c.reason,
               "predicted_seconds": {k: round(v, 1) for k, v in self.predicted().items()},
               "runners_up": [r.row() for r in self.runners_up], "notes": list(self.notes)}
        if self.laps:
            actual = {"measuring": self.measured_seconds, **self.laps,
                      "total": (self._last or time.perf_counter()) - self.started}
            out["actual_seconds"] = {k: round(v, 1) for k, v in actual.items()}
        if result is not None:
            out["epochs_run"] = result.epochs_run
        out["adapted"] = list(self._guard.adapted) if self._guard is not None else []
        return out


def plan(data, minutes: float, weights="imagenet", candidates=None, *, sizes=None, precision="auto",
         remeasure: bool = False, verbose: bool = True, started: float | None = None,
         machine: Machine | None = None) -> Plan:
    """The most accurate fine-tune of `candidates` (default `CANDIDATES`) that fits `minutes` here.

    data: an `ImageData` (its training / validation counts, classes and batch
    size are what is planned for; image files, when it has them, set the
    useful resolution from random initialization). weights: a tag
    ("imagenet", "pycls", ...) or None for random initialization. Measuring the
    machine is part of the budget (and cached: only the first plan pays it).
    Raises ValueError, before any training, when not even one epoch of the
    cheapest candidate fits. started: `time.perf_counter()` when the budget's
    clock started (default: now), e.g. to plan again within one budget.
    sizes: image sides to consider (default SIZES; from random initialization
    none above twice the images' own side). machine: a `Machine` to plan for
    instead of this one's measured profile.
    """
    from workbench.train.precision import resolve_precision
    started = time.perf_counter() if started is None else started
    minutes = checks.positive_number("minutes", minutes, " (the time budget in minutes)")
    variants = [resolve_variant(v) for v in (candidates or CANDIDATES)]
    capped = sizes is None  # the planner's own sizes: from scratch, none above twice the images' side
    sizes = [checks.image_size(s, "sizes") for s in (SIZES if sizes is None else sizes)]
    weights = None if weights in (None, "", "none", "None") else weights
    if machine is None:
        machine = measure(resolve_precision(precision), remeasure, verbose)
    n_train, n_val = data.num_train, data.num_val
    batch = data.batch_size
    own = images_side(data)
    decode = decode_seconds(data)
    spent = time.perf_counter() - started
    budget = minutes * 60 * MARGIN - spent
    found, refused = candidates_for(machine, budget, n_train, n_val, data.num_classes, batch, weights,
                                    variants, sizes, own if capped else None, decode, data.image_size)
    if not found:
        cheapest = min(variants, key=lambda v: complexity(v, min(sizes))["flops"])
        one = costs.phases(machine, cheapest, min(sizes), 1, False, n_train, n_val, batch, weights is None,
                           data.num_classes, decode, True)
        raise ValueError(
            f"A budget of {minutes:g} min cannot fit one epoch of the cheapest candidate here: {cheapest} at "
            f"{min(sizes)} px needs ~{(sum(one.values()) + spent) / 60:.1f} min for {n_train} training images "
            f"(measuring took {spent:.0f} s). Give more minutes, or fewer images (max_train_images)."
            + (f" Refused: {'; '.join(refused)}" if refused else ""))
    found.sort(key=lambda c: (-c.score, c.seconds))
    best_of = {}
    for c in found:
        best_of.setdefault(c.variant, c)
    runners = [c for c in best_of.values() if c is not found[0]][:8]
    notes = []
    if own:
        notes.append(f"The images' median short side is {own} px.")
    if found[0].seconds + spent < 0.7 * minutes * 60:
        notes.append(f"It finishes early: by the score, more epochs (at most {MAX_EPOCHS}, past the 24 measured) "
                     f"or a larger model would not raise the expected accuracy.")
    notes.append(f"Under-training time constant: {tau(weights is not None, n_train):.1f} epochs for "
                 f"{n_train} training images.")
    result = Plan(found[0], minutes, spent, started, runners, refused, machine, notes)
    Say(verbose)(result.table())
    return result
