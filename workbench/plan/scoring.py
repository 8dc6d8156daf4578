"""Scoring: the expected top-1 of each candidate run, and every candidate that fits a budget.

score = prior (the ImageNet top-1 of the weights: transfer accuracy tracks it,
Kornblith et al. 2019; 0 from random initialization) - resolution (a side
below the reference) - under-training (too few epochs) - linear probe (head
only). The reference side is the weights' training size, or from random
initialization the images' own (upsampling adds nothing to learn from).
Figures behind each constant: docs/budget.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from workbench.models import published
from workbench.models.design import get_config
from workbench.plan import costs
from workbench.plan.machine import Machine

MAX_EPOCHS = 30
# Top-1 points lost at h halvings below the reference side: [0] * h + [1] * h**2, faster at low resolution
# (FixRes, Touvron et al. 2019: 3.7 points from 224 to 128 px; ImageNet at 64 px, Chrabaszcz et al. 2017: ~10).
RESOLUTION_POINTS = (3.0, 2.0)
# The head alone on a frozen backbone against full fine-tuning: 0.19 lower on average on the transfer benchmark.
LINEAR_PROBE_POINTS = 19.0
# Under-training deficit UNDERTRAINED[pretrained] * exp(-epochs / tau), tau = TAU_EPOCHS[pretrained] *
# sqrt(REFERENCE_IMAGES / training images), at least 1 epoch: fitted to the transfer benchmark's epochs sweep.
UNDERTRAINED = {True: 29.0, False: 65.0}
TAU_EPOCHS = {True: 1.2, False: 4.3}
REFERENCE_IMAGES = 500


def tau(pretrained_weights: bool, num_train: int) -> float:
    """Epochs of the under-training curve's time constant: longer from scratch and on small data."""
    return max(1.0, TAU_EPOCHS[pretrained_weights] * math.sqrt(REFERENCE_IMAGES / max(num_train, 1)))


def resolution_loss(reference: int, size: int) -> float:
    """Top-1 points lost training at `size` against the `reference` side."""
    halvings = max(0.0, math.log2(reference / size))
    return RESOLUTION_POINTS[0] * halvings + RESOLUTION_POINTS[1] * halvings ** 2


def prior(variant, weights) -> tuple[float, int, str | None, str]:
    """(top-1 prior, reference size, resolved tag, why) of a variant's weights."""
    if weights is None:
        return 0.0, 0, None, "random initialization"
    info = published.resolve(get_config(variant), weights)
    top1 = info.top1
    if top1 is None:  # keras.applications' copies of the paper's weights: the paper's top-1
        same = [w for w in published.table() if w.variant == info.variant and w.tag.startswith("pycls")]
        top1 = same[0].top1 if same and same[0].top1 else None
    if top1 is None:
        raise ValueError(f"no published top-1 for {variant} weights {weights!r}")
    return float(top1), int(info.train_size), info.tag, f"ImageNet top-1 {top1:.1f} ({info.tag})"


@dataclass
class Candidate:
    """One way to spend the budget: what it trains, its predicted phases (seconds) and its score."""

    variant: str
    weights: str | None
    image_size: int
    batch_size: int
    epochs: int
    unfreeze: str
    phases: dict
    prior: float
    resolution: float
    undertrained: float
    probe_cost: float
    reason: str = ""

    @property
    def seconds(self) -> float:
        return float(sum(self.phases.values()))

    @property
    def score(self) -> float:
        return self.prior - self.resolution - self.undertrained - self.probe_cost

    def row(self) -> str:
        what = "linear probe" if self.unfreeze == "0:head" else "fine-tune"
        return (f"{self.variant:<16} {str(self.weights or 'none'):<16} {self.image_size:>4} {self.epochs:>3} "
                f"{what:<12} {self.prior:>6.1f} {-self.resolution:>6.1f} {-self.undertrained:>6.1f} "
                f"{-self.probe_cost:>6.1f} {self.score:>6.1f} {self.seconds / 60:>6.1f}")


HEADER = (f"{'variant':<16} {'weights':<16} {'px':>4} {'ep':>3} {'training':<12} {'prior':>6} {'res':>6} "
          f"{'epochs':>6} {'probe':>6} {'score':>6} {'min':>6}")


def candidates_for(machine: Machine, budget_seconds: float, n_train: int, n_val: int, num_classes: int,
                   batch: int, weights, variants, sizes, own_side, decode=0.0,
                   current_size=None) -> tuple[list[Candidate], list[str]]:
    """Every (variant, size, training) that fits, each with its most epochs; and the variants refused, with why."""
    out, refused = [], []
    for variant in variants:
        try:
            top1, native, tag, why = prior(variant, weights)
        except ValueError as e:
            refused.append(f"{variant}: {e}")
            continue
        scratch = tag is None
        reference = native if not scratch else min(224, own_side or 224)
        t = tau(not scratch, n_train)
        for size in sizes:
            if scratch and own_side and size > 2 * own_side:
                continue
            loss = resolution_loss(reference, size)
            for probe in ((False, True) if not scratch else (False,)):
                def phases_at(epochs):
                    return costs.phases(machine, variant, size, epochs, probe, n_train, n_val, batch, scratch,
                                        num_classes, decode, size != current_size)
                fixed = sum(phases_at(0).values())
                each = sum(phases_at(1).values()) - fixed
                epochs = min(MAX_EPOCHS, int((budget_seconds - fixed) // each)) if each > 0 else 0
                if epochs < 1:
                    continue
                out.append(Candidate(variant, tag, size, batch, epochs, "0:head" if probe else "auto",
                                     phases_at(epochs), top1, loss,
                                     UNDERTRAINED[not scratch] * math.exp(-epochs / t),
                                     LINEAR_PROBE_POINTS if probe else 0.0, why))
    return out, refused
