"""Progress messages: one way to print a run's news and keep it for its log."""
from __future__ import annotations


class Say:
    """`say(msg)` prints `msg` (when `verbose`) and appends it to `lines`; `Say(False)` only keeps them."""

    def __init__(self, verbose=True, lines: list[str] | None = None):
        self.verbose = bool(verbose)
        self.lines = lines if lines is not None else []

    def __call__(self, msg: str = "") -> None:
        self.lines.append(msg)
        if self.verbose:
            print(msg, flush=True)
