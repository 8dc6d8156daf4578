"""Pictures of the data: a grid of images and the class distribution."""

from __future__ import annotations

import math

import numpy as np

from workbench.utils.figures import finish, plt


def show_batch(data, n: int = 16, split: str = "train", path=None):
    """Grid of the first `n` images of `data.train` (augmented) or `data.val`, titled by class (label sets)."""
    images, labels = [], []
    for x, y in getattr(data, split):
        images.append(x.numpy())
        labels.append(y.numpy())
        if sum(len(b) for b in images) >= n:
            break
    images, labels = np.concatenate(images)[:n], np.concatenate(labels)[:n]
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels):
        ax.imshow(np.clip(image, 0, 255).astype("uint8"))
        if getattr(data, "multi_label", False):
            title = ", ".join(data.class_names[i] for i in np.flatnonzero(label > 0.5)) or "-"
        else:
            title = data.class_names[int(np.argmax(label) if np.ndim(label) else label)]  # mixup: largest share
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{split} batch ({data.image_size}x{data.image_size})")
    return finish(fig, path)


def plot_class_distribution(data, path=None):
    """Bar chart of the train and val images per class."""
    names = data.class_names
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 3.5))
    ax.bar(x - 0.2, [data.train_counts[c] for c in names], 0.4, label=f"train ({data.num_train})")
    ax.bar(x + 0.2, [data.val_counts[c] for c in names], 0.4, label=f"val ({data.num_val})")
    ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylabel("images")
    ax.set_title(f"Class distribution (imbalance {data.imbalance:.1f}x)")
    ax.legend()
    return finish(fig, path)
