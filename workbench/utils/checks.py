"""Argument rules, one function each: what is accepted, and the sentence when it is not.

Library functions check their own arguments with these; `recipe.check_params`
calls the same functions and reports their messages, so a rule is written once.
"""
from __future__ import annotations

import math
import numbers

MIN_IMAGE_SIZE = 32  # RegNet downsamples 32x


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(name: str, value, hint: str = "") -> int:
    """An integer >= 1."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer{hint}, got {value!r}.")
    return int(value)


def non_negative_int(name: str, value, hint: str = "") -> int:
    """An integer >= 0."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be 0 or a positive integer{hint}, got {value!r}.")
    return int(value)


def integer(name: str, value) -> int:
    """Any integer (seeds)."""
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    return int(value)


def positive_number(name: str, value, hint: str = "") -> float:
    """A finite number > 0 (True, NaN and infinity are refused)."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number{hint}, got {value!r}.")
    return float(value)


def fraction(name: str, value, hint: str = "", *, low_open: bool = False) -> float:
    """A number in [0, 1), or in (0, 1) with `low_open`."""
    if not _is_real(value) or not (0 < value < 1 if low_open else 0 <= value < 1):
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise ValueError(f"{name} must be a number in {interval}{hint}, got {value!r}.")
    return float(value)


def lr_decay(value) -> float:
    """The discriminative decay: a finite number >= 1 (1 = every stage at the head's rate).

    A decay below 1 would train the lower, more general stages faster than the
    head; per-stage `multipliers` remain free for whoever wants that.
    """
    if not _is_real(value) or not math.isfinite(value) or value < 1:
        raise ValueError(f"lr_decay must be a number >= 1 (each stage below the head trains lr_decay "
                         f"times slower; 1 = all at one rate), got {value!r}.")
    return float(value)


def image_size(value, name: str = "image_size") -> int:
    """An image side in pixels: an integer >= MIN_IMAGE_SIZE."""
    if not _is_int(value) or value < MIN_IMAGE_SIZE:
        raise ValueError(f"{name}={value!r}: expected an integer of at least {MIN_IMAGE_SIZE} pixels "
                         f"(RegNet downsamples 32x), e.g. 224.")
    return int(value)


def one_of(name: str, value, choices) -> str:
    """One of a few strings."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value
