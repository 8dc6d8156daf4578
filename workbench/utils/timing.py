"""Timing a model on this machine: median seconds per call, training and inference throughput."""
from __future__ import annotations

import time

import numpy as np


def median_seconds(step, warmup: int, steps: int) -> float:
    """Median seconds per call of `step()` after `warmup` calls (robust to a busy machine)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def throughput(model, x, y, train_steps: int, infer_steps: int, optimizer) -> tuple[float, float]:
    """(training img/s, inference img/s) of a Keras 2 or 3 model compiled here, on one in-memory batch."""
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    train = median_seconds(lambda: model.train_on_batch(x, y), 1, train_steps)
    infer = median_seconds(lambda: model.predict_on_batch(x), 1, infer_steps)
    return len(x) / train, len(x) / infer
