"""A gallery of images with a caption each, optionally with heatmaps (Grad-CAM) drawn over them."""
from __future__ import annotations

import math

import numpy as np

from workbench.report.gradcam import overlay_heatmap
from workbench.utils.figures import finish, plt


def check_heatmaps(heatmaps, n: int) -> np.ndarray:
    """`heatmaps` as float32 (n, h, w): one map per image, values in [0, 1]; a ValueError says what is wrong."""
    maps = np.asarray(heatmaps, np.float32)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if maps.ndim != 3 or len(maps) < n:
        raise ValueError(f"heatmaps must be one 2-D map per image, shaped (images, height, width), at least "
                         f"{n} of them; got shape {maps.shape}.")
    if not np.all(np.isfinite(maps)) or maps.min() < 0 or maps.max() > 1:
        raise ValueError("heatmaps must hold values in [0, 1] (scale each map by its maximum first); got "
                         f"values from {np.nanmin(maps):.3g} to {np.nanmax(maps):.3g}.")
    return maps[:n]


def plot_gallery(images, captions, heatmaps=None, colors=None, title=None, path=None):
    """Images (N, H, W, 3) in 0-255, each captioned; `heatmaps` (N, h, w) in [0, 1] are overlaid
    (`overlay_heatmap`). Returns the Figure, saved to `path` when given."""
    images = np.asarray(images)
    n = len(images)
    maps = check_heatmaps(heatmaps, n) if heatmaps is not None else None
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(overlay_heatmap(images[i], maps[i]) if maps is not None
                  else np.clip(images[i], 0, 255).astype("uint8"))
        ax.set_title(captions[i], fontsize=8, color=colors[i] if colors else "black")
    if title:
        fig.suptitle(title)
    return finish(fig, path)
