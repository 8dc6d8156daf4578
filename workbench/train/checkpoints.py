"""A fine-tuning run's progress on disk: per-epoch checkpoints, the best epoch, resume, the NaN guard.

`output_dir/checkpoints/` holds `last.keras` (model and optimizer state after
the last completed epoch), `best.keras` (the best epoch by the monitored
metric: lowest for a loss, highest otherwise) and `state.json` (epoch, history, unfreeze events, best epoch and the
settings that must match to resume). Files are written to a temporary name
and renamed, so a run killed mid-write leaves the previous epoch intact.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

STATE_VERSION = 1
# Settings that change what the remaining epochs would do: a resumed run must match them.
RESUME_KEYS = ("epochs", "unfreeze", "lr", "steps_per_epoch")


def _num(x) -> float:
    return float(np.asarray(x))


@contextlib.contextmanager
def all_trainable(model):
    """Temporarily make every layer trainable (so a saved model reloads with its optimizer state)."""
    layers = list(model._flatten_layers(include_self=False))
    flags = [layer.trainable for layer in layers]
    try:
        for layer in layers:
            layer.trainable = True
        yield
    finally:
        for layer, flag in zip(layers, flags):
            layer.trainable = flag


def save_model(model, path: Path):
    tmp = path.with_name(path.stem + ".tmp.keras")
    with all_trainable(model):
        model.save(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def restore(model, path: Path, optimizer: bool = True):
    """Copy weights (and optimizer state) from a checkpoint into `model` and its compiled optimizer."""
    ckpt = keras.models.load_model(path)
    model.set_weights(ckpt.get_weights())
    if not optimizer:
        return
    src, dst = ckpt.optimizer.variables, model.optimizer.variables
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
        raise ValueError(f"The optimizer state in {path} does not match this model's optimizer "
                         f"({len(src)} vs {len(dst)} variables). Use another output_dir or resume=False.")
    for a, b in zip(src, dst):
        b.assign(a.numpy())


class RunState:
    """Epoch, history, unfreeze events and best epoch of a run; on disk when it has an output_dir."""

    def __init__(self, output_dir, settings: dict, monitor: str, writer: bool = True):
        self.dir = Path(output_dir) / "checkpoints" if output_dir is not None else None
        self.writer = writer  # False on the workers of a cluster other than the chief: they write nothing here
        self.settings = settings
        self.state = {"version": STATE_VERSION, "settings": settings, "epoch": -1, "history": {},
                      "events": [], "best_epoch": None, "best_value": None, "monitor": monitor}

    @property
    def next_epoch(self) -> int:
        return self.state["epoch"] + 1

    def resume(self, model, resume: bool, say) -> int | None:
        """Continue the run saved in output_dir (returns the epoch it continues at), or start afresh."""
        if self.dir is None:
            return None
        state_file = self.dir / "state.json"
        resumed_at = None
        if state_file.exists() and resume:
            saved = json.loads(state_file.read_text())
            diff = {k: (saved["settings"].get(k), v) for k, v in self.settings.items()
                    if k in RESUME_KEYS and saved["settings"].get(k) != v}
            if diff:
                raise ValueError(f"{self.dir} holds a run with other settings "
                                 f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}). "
                                 "Use another output_dir, or resume=False to start over.")
            restore(model, self.dir / "last.keras")
            self.state = saved
            resumed_at = self.next_epoch
            say(f"Resuming from {self.dir / 'last.keras'}: epochs 1-{resumed_at} done, continuing at epoch "
                f"{resumed_at + 1}/{self.settings['epochs']} (optimizer step {int(model.optimizer.iterations.numpy())}).")
        elif state_file.exists() and self.writer:
            shutil.rmtree(self.dir)
        if self.writer:
            self.dir.mkdir(parents=True, exist_ok=True)
        return resumed_at

    def record(self, epoch: int, logs: dict) -> bool:
        """Append an epoch's logs to the history; True if it is the best epoch so far."""
        h = self.state["history"]
        for k in set(h) | set(logs):
            h.setdefault(k, [None] * (self.state["epoch"] + 1))
            h[k].append(_num(logs[k]) if k in logs and logs[k] is not None else None)
        self.state["epoch"] = epoch
        monitor, best = self.state["monitor"], self.state["best_value"]
        value = logs.get(monitor)
        sign = -1.0 if "loss" in monitor else 1.0  # losses are best low, everything else high
        improved = (value is not None and math.isfinite(_num(value))
                    and (best is None or sign * _num(value) > sign * best))
        if improved:
            self.state["best_value"], self.state["best_epoch"] = _num(value), epoch
        return improved

    def add_events(self, events):
        """Unfreeze events not recorded yet (a resumed run keeps those from before)."""
        known = {e["epoch"] for e in self.state["events"]}
        self.state["events"] += [e for e in events if e["epoch"] not in known]

    def save(self, model, improved: bool):
        if self.dir is None:
            return
        if not self.writer:
            # Saving reads the model's variables, which under several workers takes every worker:
            # the others save too, to a scratch folder (as tf.distribute's multi-worker guide does).
            with tempfile.TemporaryDirectory() as scratch:
                save_model(model, Path(scratch) / "last.keras")
            return
        last = self.dir / "last.keras"
        save_model(model, last)
        if improved:
            shutil.copyfile(last, self.dir / "best.tmp.keras")
            os.replace(self.dir / "best.tmp.keras", self.dir / "best.keras")
        write_json(self.dir / "state.json", self.state)


class Recorder(keras.callbacks.Callback):
    """Records every epoch into a RunState (across fits and resumes), checkpoints it, stops on NaN."""

    def __init__(self, full_model, run: RunState, keep_best_in_memory: bool):
        super().__init__()
        self.full_model = full_model
        self.run = run
        self.keep_best = keep_best_in_memory
        self.best_weights = None
        self.nan = None
        self.epoch_seconds: dict[int, float] = {}
        self.unfreezer = None
        self._t0 = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(_num(loss)):
            self.nan = (self._epoch, batch)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan is not None:
            return
        self.epoch_seconds[epoch] = time.perf_counter() - self._t0
        logs = dict(logs or {})
        logs["lr"] = _num(keras.ops.convert_to_numpy(self.full_model.optimizer.learning_rate))
        if self.unfreezer is not None:
            self.run.add_events(self.unfreezer.events)
        improved = self.run.record(epoch, logs)
        if improved and self.keep_best:
            self.best_weights = [w.copy() for w in self.full_model.get_weights()]
        self.run.save(self.full_model, improved)

    def stop_if_nan(self, lr):
        """After a fit: if the loss went NaN, put back the last good checkpoint and raise."""
        if self.nan is None:
            return
        epoch, batch = self.nan
        last = self.run.dir / "last.keras" if self.run.dir is not None else None
        kept = ""
        if last is not None and last.exists():
            restore(self.full_model, last)
            kept = (f" The model holds the last good checkpoint ({last}, after epoch "
                    f"{self.run.state['epoch'] + 1}).")
        raise FloatingPointError(
            f"The loss became NaN/inf in epoch {epoch + 1}, batch {batch + 1}; training stopped.{kept} "
            f"Try a lower lr (now {lr}), check the inputs for NaNs, or disable mixed precision.")
