"""`finetune`'s settings in three groups, each checked once where the keyword API enters.

`Optimization`: how the weights move (optimizer, peak rate and warmup, per-stage multipliers, the loss's
label smoothing and class weights). `Runtime`: where and how the run executes (seed and determinism,
precision, tf.distribute strategy, XLA, feature caching, verbosity). `Outputs`: what the run keeps
(checkpoint folder and resuming, which epoch's weights come back, extra callbacks). The training policy
(`workbench.train.policy.TrainingPolicy`) is the fourth.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras

from workbench.utils import checks
from workbench.train.precision import PRECISIONS


@dataclass(frozen=True)
class Optimization:
    """Optimizer (name or instance), peak lr and warmup fraction, stage multipliers, loss settings."""

    lr: float = 1e-3
    optimizer: object = "adamw"
    weight_decay: float = 0.05
    multipliers: dict | None = None
    label_smoothing: float = 0.1
    class_weight: object = None   # None, "balanced" or {class index: weight}
    warmup: float = 0.05

    @classmethod
    def checked(cls, *, lr, optimizer, weight_decay, multipliers, label_smoothing, class_weight,
                warmup) -> Optimization:
        """The group from `finetune`'s keywords, each checked (a ValueError says which and what is expected)."""
        if class_weight not in (None, "balanced") and not isinstance(class_weight, dict):
            raise ValueError(f"class_weight must be None, 'balanced' or {{class index: weight}}, got {class_weight!r}.")
        return cls(lr=checks.positive_number("lr", lr, " (a learning rate, e.g. 1e-3)"), optimizer=optimizer,
                   weight_decay=weight_decay, multipliers=multipliers,
                   label_smoothing=checks.fraction("label_smoothing", label_smoothing),
                   class_weight=class_weight,
                   warmup=checks.fraction("warmup", warmup, " (a fraction of all steps)"))

    def class_weights(self, data) -> dict | None:
        """{class index: weight} for `fit` ("balanced": the data's inverse frequencies), or None."""
        return dict(data.class_weights) if self.class_weight == "balanced" else self.class_weight

    @property
    def optimizer_name(self) -> str:
        return str(self.optimizer) if isinstance(self.optimizer, str) else type(self.optimizer).__name__


def verbosity(verbose) -> int:
    """0 silent, 1 a progress bar, 2 a line per epoch; "auto": WORKBENCH_PROGRESS, else bar on a terminal."""
    if verbose != "auto":
        return int(verbose)
    env = os.environ.get("WORKBENCH_PROGRESS", "")
    if env in ("bar", "lines"):
        return 1 if env == "bar" else 2
    return 1 if sys.stdout.isatty() else 2


@dataclass(frozen=True)
class Runtime:
    """Seed and determinism, precision ("auto" until `finetune` decides it for the model), strategy (None, a
    name or a Strategy), XLA, caching, verbosity."""

    seed: int = 0
    deterministic: bool = True
    precision: str = "float32"
    strategy: object = None
    jit_compile: object = "auto"
    cache_features: bool = True
    verbosity: int = 2

    @classmethod
    def checked(cls, *, seed, deterministic, precision, strategy, jit_compile, cache_features,
                verbose) -> Runtime:
        """The group from `finetune`'s keywords: seed and precision checked, verbosity made a level."""
        return cls(seed=checks.integer("seed", seed), deterministic=deterministic,
                   precision=checks.one_of("precision", precision, PRECISIONS), strategy=strategy, jit_compile=jit_compile,
                   cache_features=cache_features, verbosity=verbosity(verbose))


@dataclass(frozen=True)
class Outputs:
    """Checkpoint folder (None: none) and resuming, best or last weights by `monitor`, extra callbacks,
    TensorBoard logs."""

    output_dir: Path | None = None
    resume: bool = True
    restore_best: bool = True
    monitor: str = "val_accuracy"
    callbacks: tuple = ()
    tensorboard: bool = True

    @classmethod
    def checked(cls, *, output_dir, resume, restore_best, monitor, callbacks, tensorboard) -> Outputs:
        """The group from `finetune`'s keywords."""
        if not isinstance(tensorboard, bool):
            raise ValueError(f"tensorboard must be True or False, got {tensorboard!r}.")
        return cls(Path(output_dir) if output_dir is not None else None, resume, restore_best, monitor,
                   tuple(callbacks or ()), tensorboard)

    def tensorboard_callbacks(self, writer: bool) -> list:
        """Keras' TensorBoard callback writing to output_dir/tensorboard, when there is an output_dir,
        `tensorboard` is on and this process writes: per-epoch scalars only (no graph, histograms or profile)."""
        if not (self.tensorboard and writer and self.output_dir is not None):
            return []
        if importlib.util.find_spec("tensorboard") is None:  # tf.summary's writers live in that package
            warnings.warn("No TensorBoard logs for this run: install the tensorboard package "
                          "(pip install tensorboard), or pass tensorboard=False.", stacklevel=3)
            return []
        return [keras.callbacks.TensorBoard(str(self.output_dir / "tensorboard"), histogram_freq=0,
                                            write_graph=False, update_freq="epoch", profile_batch=0)]
