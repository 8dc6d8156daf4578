"""The learning-rate range test (Smith 2015; fastai `lr_find`).

Train for a few mini-batches while the learning rate grows exponentially from
`start_lr` to `end_lr`, record the smoothed loss, stop once it diverges, then
put the model back exactly as it was. The picture shows where the loss falls
fastest; the suggestion is fastai's default "valley" rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from workbench.utils import checks
from workbench.models.contract import outputs_logits
from workbench.utils.figures import finish, plt

__all__ = ["LRFindResult", "lr_find", "suggest_lr"]

_SMOOTHING = 0.98  # fastai's exponential moving average of the loss
_DIVERGENCE = 4.0  # stop when the smoothed loss exceeds 4x its minimum
METHODS = ("valley", "steep", "minimum")


def _default_loss(model: keras.Model):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=outputs_logits(model))


def suggest_lr(lrs, losses, method: str = "valley") -> float:
    """A learning rate from a range test's (lrs, smoothed losses).

    - "valley" (fastai's default since 2.4): the longest stretch over which the loss keeps
      decreasing; the rate about halfway through it (index start + 1/3 + 1/6 of its length).
    - "steep": the rate at the steepest descent of loss against log(lr).
    - "minimum": the rate at the minimum loss, divided by 10.
    The first 10% and last 5 points are trimmed first (warm-up noise, divergence), as fastai does.
    """
    lrs, losses = np.asarray(lrs, dtype="float64"), np.asarray(losses, dtype="float64")
    if method not in METHODS:
        raise ValueError(f"Unknown suggestion method {method!r}; expected one of {METHODS}.")
    if len(lrs) == 0:
        raise ValueError("No losses were recorded: cannot suggest a learning rate.")
    lo, hi = len(lrs) // 10, len(lrs) - 5
    if hi - lo >= 4:
        lrs, losses = lrs[lo:hi], losses[lo:hi]
    finite = np.isfinite(losses)
    lrs, losses = lrs[finite], losses[finite]
    if len(lrs) < 2:
        return float(lrs[0]) if len(lrs) else float("nan")
    if method == "minimum":
        return float(max(lrs[np.argmin(losses)] / 10.0, lrs[0]))
    if method == "steep":
        slopes = np.diff(losses) / np.diff(np.log(lrs))
        return float(lrs[int(np.argmin(slopes))])
    # valley: longest decreasing subsequence ending at each point (O(n^2), n <= a few hundred)
    n = len(losses)
    lds = np.ones(n, dtype=int)
    for i in range(1, n):
        earlier = losses[:i] > losses[i]
        if earlier.any():
            lds[i] = lds[:i][earlier].max() + 1
    end = int(np.argmax(lds))
    start = end - int(lds[end]) + 1
    third = (end - start) / 3
    return float(lrs[start + int(third) + int(third / 2)])


@dataclass(repr=False)
class LRFindResult:
    """What the range test saw: rates, smoothed and raw losses, the suggestion and its picture."""

    lrs: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    suggestion: float
    method: str
    suggestions: dict = field(default_factory=dict)
    diverged: bool = False
    figure: object = None

    def plot(self, path=None):
        """Smoothed loss vs learning rate (log axis), the suggestion marked."""
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot(self.lrs, self.raw_losses, color="0.75", lw=1, label="loss (per batch)")
        ax.plot(self.lrs, self.losses, color="C0", lw=2, label="loss (smoothed)")
        ax.set_xscale("log")
        finite = self.losses[np.isfinite(self.losses)]
        if len(finite):
            low, first = finite.min(), finite[0]
            pad = 0.05 * max(first - low, 1e-3)
            ax.set_ylim(low - pad, min(finite.max(), 2 * first - low) + 2 * pad)
        for (name, lr), color in zip(self.suggestions.items(), ("C3", "C2", "C1")):
            if not math.isfinite(lr):
                continue
            y = float(np.interp(math.log(lr), np.log(self.lrs), self.losses))
            main = name == self.method
            ax.axvline(lr, color=color, ls="-" if main else ":", lw=1.5 if main else 1)
            ax.plot([lr], [y], "o", color=color, ms=8 if main else 5,
                    label=f"{name}: {lr:.2g}" + ("  (suggested)" if main else ""))
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss")
        ax.set_title(f"LR range test: suggested lr = {self.suggestion:.2g} ({self.method})"
                     + (", stopped at divergence" if self.diverged else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=9)
        return finish(fig, path)

    def __repr__(self):
        return (f"LRFindResult(suggestion={self.suggestion:.3g} ({self.method}), "
                f"{len(self.lrs)} steps over [{self.lrs[0]:.2g}, {self.lrs[-1]:.2g}]"
                + (", diverged" if self.diverged else "") + ")")


def _fresh_optimizer(optimizer, start_lr):
    """A new optimizer of the requested kind at `start_lr`; the user's own is never touched."""
    if optimizer is None:
        optimizer = "adamw"
    if isinstance(optimizer, str):
        opt = keras.optimizers.get(optimizer)
        opt.learning_rate = start_lr
        return opt
    if isinstance(optimizer, keras.optimizers.Optimizer):
        config = optimizer.get_config()
        config["learning_rate"] = start_lr
        try:
            return type(optimizer).from_config(config)
        except Exception as err:  # e.g. a wrapper that needs the model to rebuild
            raise ValueError(f"lr_find could not make a fresh copy of {type(optimizer).__name__} "
                             f"({err}). Pass its plain kind instead, e.g. optimizer='adamw'.") from err
    raise ValueError(f"optimizer must be a name like 'adamw' or a keras optimizer, got {optimizer!r}.")


def _checked_dataset(data, start_lr, end_lr, steps, method) -> tf.data.Dataset:
    """The training dataset of `data`, once the range test's arguments are checked."""
    checks.positive_number("start_lr", start_lr)
    if not (checks.positive_number("end_lr", end_lr) > start_lr):
        raise ValueError(f"Need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}.")
    if checks.positive_int("steps", steps, " (100 is typical)") < 5:
        raise ValueError(f"steps must be an integer >= 5 (100 is typical), got {steps!r}.")
    if method not in METHODS:
        raise ValueError(f"Unknown suggestion method {method!r}; expected one of {METHODS}.")
    dataset = getattr(data, "train", data)
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError("data must be an object with a `.train` tf.data.Dataset (wb.load_folder / "
                         f"wb.load_tfds) or a tf.data.Dataset of (images, labels); got {type(data).__name__}.")
    return dataset


def _train_step(model, opt, loss_fn, variables):
    """One compiled step at a given rate: trains `variables`, returns the loss (without regularization)."""

    @tf.function
    def train_step(x, y, lr):
        opt.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            value = loss_fn(y, pred)
            if model.losses:
                value_total = value + tf.add_n([tf.cast(l, value.dtype) for l in model.losses])
            else:
                value_total = value
        grads = tape.gradient(value_total, variables)
        opt.apply_gradients(zip(grads, variables))
        return value

    return train_step


def lr_find(model: keras.Model, data, start_lr: float = 1e-7, end_lr: float = 1.0, steps: int = 100,
            optimizer="adamw", loss=None, method: str = "valley", path=None,
            verbose: bool = False) -> LRFindResult:
    """Learning-rate range test on `data.train` (or a dataset of (images, labels)).

    The rate grows exponentially from `start_lr` to `end_lr` over `steps` mini-batches
    (the dataset repeats if shorter); the test stops early when the smoothed loss exceeds
    4x its minimum. Only the currently trainable variables train, with a fresh optimizer of
    kind `optimizer`; afterwards every model weight (BatchNorm statistics included) is
    restored and the model's own optimizer and compile state are left alone.
    `loss` defaults to sparse categorical cross-entropy, `from_logits` chosen from the
    last layer's activation. `method` picks the suggestion rule (see `suggest_lr`).
    """
    dataset = _checked_dataset(data, start_lr, end_lr, steps, method)
    variables = model.trainable_variables
    if not variables:
        raise ValueError("The model has no trainable variables: unfreeze at least the head "
                         "(e.g. wb.GradualUnfreezing({0: 'head'})) before lr_find.")
    loss_fn = keras.losses.get(loss) if loss is not None else _default_loss(model)
    opt = _fresh_optimizer(optimizer, start_lr)
    opt.build(variables)
    train_step = _train_step(model, opt, loss_fn, variables)
    saved = [w.copy() for w in model.get_weights()]
    schedule = start_lr * (end_lr / start_lr) ** (np.arange(steps) / (steps - 1))
    lrs, raw, smooth = [], [], []
    avg, best, diverged = 0.0, math.inf, False
    try:
        for i, (x, y) in enumerate(dataset.repeat().take(steps)):
            value = float(train_step(x, y, tf.constant(schedule[i], tf.float32)))
            avg = _SMOOTHING * avg + (1 - _SMOOTHING) * value
            smoothed = avg / (1 - _SMOOTHING ** (i + 1))
            lrs.append(float(schedule[i]))
            raw.append(value)
            smooth.append(smoothed)
            if verbose:
                print(f"step {i + 1}/{steps}: lr {schedule[i]:.2e} loss {value:.4f} (smoothed {smoothed:.4f})")
            if not math.isfinite(smoothed) or (i > 0 and smoothed > _DIVERGENCE * best):
                diverged = True
                break
            best = min(best, smoothed)
    finally:
        model.set_weights(saved)
    if not lrs:
        raise ValueError("The dataset yielded no batches.")
    lrs_a, smooth_a = np.array(lrs), np.array(smooth)
    suggestions = {m: suggest_lr(lrs_a, smooth_a, m) for m in METHODS}
    result = LRFindResult(lrs=lrs_a, losses=smooth_a, raw_losses=np.array(raw),
                          suggestion=suggestions[method], method=method,
                          suggestions=suggestions, diverged=diverged)
    result.figure = result.plot(path)
    return result
