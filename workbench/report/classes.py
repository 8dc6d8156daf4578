"""Rare classes, seen: the class counts a run was trained and judged on, and which figures mean little."""
from __future__ import annotations

FEW = 5  # below this many validation images, a class's precision, recall, F1 or AP are not reliable


def class_counts(data) -> dict:
    """{"train": {class: images}, "val": {class: images}} (multi-label: the images holding each class)."""
    return {"train": dict(data.train_counts), "val": dict(data.val_counts)}


def unreliable(val_counts: dict, few: int = FEW) -> list[str]:
    """One sentence per class with fewer than `few` validation images."""
    return [f"Class '{name}' has only {n} validation image{'s' if n != 1 else ''}: its precision, recall, F1 "
            f"and AP are not reliable (collect at least {few})." for name, n in val_counts.items() if n < few]
