"""What a `finetune` run hands back: `FinetuneResult`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras


@dataclass
class FinetuneResult:
    """What a `finetune` run did: per-epoch history, unfreeze events, best epoch and the model."""

    history: dict[str, list]
    events: list[dict]
    epochs_run: int
    best_epoch: int | None
    best_val_accuracy: float | None
    model: keras.Model
    feature_cache_speedup: float | None = None
    resumed_at: int | None = None
    monitor: str = "val_accuracy"  # what best_epoch and best_val_accuracy are of (multi-label: val_map)
    output_dir: Path | None = None
    log: list[str] = field(default_factory=list)
    epoch_seconds: dict[int, float] = field(default_factory=dict)  # wall time of each epoch run here
    precision: str = "float32"
    precision_choice: dict = field(default_factory=dict)  # how "auto" was decided (precision.PrecisionChoice)
    strategy: str = ""
    policy: dict = field(default_factory=dict)         # the training policy actually used (policy.TrainingPolicy)
    evaluation: dict = field(default_factory=dict)     # with tta: plain and test-time-augmented val accuracy
    progressive: dict = field(default_factory=dict)    # with progressive: side per epoch, seconds saved

    @property
    def val_accuracy(self):
        return self.best_val_accuracy

    def summary(self) -> str:
        best = (f"best {self.monitor} {self.best_val_accuracy:.4f} at epoch {self.best_epoch + 1}"
                if self.best_epoch is not None else "no validation")
        speed = (f", head epochs {self.feature_cache_speedup:.1f}x faster on cached features"
                 if self.feature_cache_speedup else "")
        return f"{self.epochs_run} epochs, {best}{speed}"
