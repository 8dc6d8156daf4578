"""What a run's TensorBoard logs and the report's Grad-CAM cost the main job: `python -m workbench.bench.report_cost`.

Runs the main job's steps in this process (recipes/custom.ipynb's defaults: RegNetY-200MF on the
offline sample, 128 px, 10 epochs) and times every call into Keras' TensorBoard callback, against the
whole `finetune`; then draws `top_losses.png` with and without the Grad-CAM overlay, alternately, and
prints the median of each. Seconds spent inside the callback do not depend on what else the machine
runs as much as a whole job's wall time does, so the figure holds on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import keras
import numpy as np

from workbench import recipe
from workbench.data.folders import load_folder
from workbench.data.sample import sample_dataset
from workbench.report.reports import plot_top_losses
from workbench.utils.figures import plt

_HOOKS = ("set_model", "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_test_begin",
          "on_test_end", "on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end")


class _TimedTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback, adding the seconds of every hook to `spent`."""

    spent = {"seconds": 0.0, "calls": 0}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in _HOOKS:
            setattr(self, name, self._timed(getattr(self, name)))

    @classmethod
    def _timed(cls, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                cls.spent["seconds"] += time.perf_counter() - start
                cls.spent["calls"] += 1
        return timed


def measure(epochs=10, image_size=128, max_train_images=0, repeats=3) -> dict:
    """The main job's TensorBoard seconds against its finetune seconds, and top_losses.png with / without Grad-CAM."""
    out = tempfile.mkdtemp(prefix="report-cost-")
    p = recipe.check_params(variant="200mf", weights="none", image_size=image_size, batch_size=32, epochs=epochs,
                            unfreeze="auto", lr=0.002, lr_decay="auto", seed=0, max_train_images=max_train_images,
                            output_dir=out, export="")
    run = recipe.Run(p, default_size=image_size)
    data = load_folder(sample_dataset(), image_size=run.prepare_weights(), batch_size=32, val_split=0.15, seed=0,
                       max_train_images=max_train_images, augment="auto", verbose=False)
    model, policy = run.build(data.num_classes)
    keras.callbacks.TensorBoard, plain = _TimedTensorBoard, keras.callbacks.TensorBoard
    try:
        start = time.perf_counter()
        result = run.train(model, data, policy)
        finetune_seconds = time.perf_counter() - start
    finally:
        keras.callbacks.TensorBoard = plain
    drawn = {True: [], False: []}
    for gradcam in [False, True] * repeats:
        start = time.perf_counter()
        plt.close(plot_top_losses(result.model, data, gradcam=gradcam))
        drawn[gradcam].append(time.perf_counter() - start)
    tensorboard = _TimedTensorBoard.spent
    return {"epochs": result.epochs_run, "finetune_seconds": round(finetune_seconds, 2),
            "tensorboard_seconds": round(tensorboard["seconds"], 3), "tensorboard_calls": tensorboard["calls"],
            "tensorboard_share": round(tensorboard["seconds"] / finetune_seconds, 4),
            "top_losses_seconds": round(float(np.median(drawn[False])), 2),
            "top_losses_gradcam_seconds": round(float(np.median(drawn[True])), 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--max-train-images", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.epochs, args.image_size, args.max_train_images)))


if __name__ == "__main__":
    main()
