"""Figure plumbing for every picture: a matplotlib backend that works headless, and saving.

Importing `pyplot` from here picks the non-interactive Agg backend when there
is no display and no notebook inline backend, so plots work in scripts,
papermill and CI alike.
"""
from __future__ import annotations

import os

import matplotlib

if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend().lower():
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "finish"]


def finish(fig, path=None, dpi: int = 100):
    """Lay out `fig`, save it to `path` when given, and return it."""
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=dpi)
    return fig
