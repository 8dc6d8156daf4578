"""EMA of weights with Keras' own machinery: the optimizer's `use_ema` and `keras.callbacks.SwapEMAWeights`.

`enable(optimizer, total_steps)` turns on `use_ema` on a Keras optimizer
before it is built, with a momentum that averages over about a tenth of the
run (Keras' default 0.99 would, on a run of a few hundred steps, still carry
the random initialization at the end). `callback()` evaluates and
checkpoints on the averaged weights: validation each epoch, the best epoch
kept by `finetune` and the returned model are the EMA weights. At the end of
each `fit` Keras writes the average into the model, so training continues
from it after the head-only epochs and between progressive-resizing phases.
"""
from __future__ import annotations

import keras

HORIZON = 0.1      # fraction of the run the average spans
MOMENTUM_RANGE = (0.9, 0.9999)


def momentum(total_steps: int) -> float:
    """EMA momentum averaging over about HORIZON of `total_steps`, within MOMENTUM_RANGE."""
    lo, hi = MOMENTUM_RANGE
    return float(min(hi, max(lo, 1.0 - 1.0 / max(HORIZON * total_steps, 1.0))))


def enable(optimizer: keras.optimizers.Optimizer, total_steps: int) -> float:
    """Turn on `use_ema` on an unbuilt Keras optimizer; returns the momentum used."""
    if optimizer.built:
        raise ValueError("EMA must be enabled before the optimizer is built.")
    optimizer.use_ema = True
    optimizer.ema_momentum = momentum(total_steps)
    optimizer.ema_overwrite_frequency = None
    return optimizer.ema_momentum


def callback() -> keras.callbacks.Callback:
    """Evaluate on the EMA weights, and leave them in the model at every epoch end (for checkpoints)."""
    return keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
