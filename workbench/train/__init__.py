"""Fine-tuning: the run, its policy, unfreezing, optimizers and schedules, checkpoints, precision, distribution and the small pieces (EMA, TTA, BatchNorm re-estimation, progressive resizing)."""
