"""The cost model: predicted seconds of each phase of a run, from a measured `Machine`.

Every variant's cost at every size follows from `design.complexity` (activations
and multiply-adds grow with the image side squared). While only the head
trains, an epoch costs the head alone on backbone features computed once
(`feature_cache`), so a linear probe costs one inference pass. Figures:
docs/budget.md.
"""
from __future__ import annotations

from workbench.data.pipeline import steps_per_epoch
from workbench.models.design import complexity
from workbench.plan.machine import Machine, blocks
from workbench.train.bn_refresh import MAX_IMAGES as BN_MAX_IMAGES

# Estimates of small parts the probes do not measure:
REPORT_SECONDS = 4.0  # the report's figures and files (~3-5 s here beside its inference)
HEAD_EPOCH_SECONDS = 0.2  # a head-only epoch on cached features (Keras' per-epoch work)
BN_FORWARD = 1.5  # BatchNorm re-estimation's forward pass in training mode (batch statistics) vs inference


def phases(machine: Machine, variant, size, epochs, probe, n_train, n_val, batch, scratch, num_classes,
           decode=0.0, reload=False) -> dict:
    """Predicted seconds of each phase of a run, setup to report. probe: head only, on cached features;
    scratch: from random initialization (BatchNorm re-estimated each epoch); decode: seconds to decode
    one image (checked when reloaded at a new size, decoded into the cache in the first epoch)."""
    cx = complexity(variant, size, num_classes)
    n_blocks, params = blocks(variant), cx["params"] + cx["bn_stats"]
    train, infer = machine.train_image(cx), machine.infer_image(cx)
    steps = steps_per_epoch(n_train, batch)
    save = machine.save_per_param * params  # a checkpoint (with the optimizer state, as the probes saved it)
    out = {"setup": (n_train + n_val) * decode if reload else 0.0, "build": machine.build_per_block * n_blocks}
    if probe:
        out["features"] = (n_train + n_val) * (infer + decode) + machine.predict_trace_per_block * n_blocks
        out["epochs"] = epochs * (HEAD_EPOCH_SECONDS + save)
    else:
        traces = 2 if scratch else 1  # validation, and from scratch the BatchNorm re-estimation's forward pass
        out["first step"] = ((machine.trace_per_block + traces * machine.predict_trace_per_block) * n_blocks
                             + (n_train + n_val) * decode)
        refresh = min(n_train, BN_MAX_IMAGES) * infer * BN_FORWARD if scratch else 0.0
        out["epochs"] = epochs * (steps * batch * train + n_val * infer + refresh + save)
    out["report"] = 2 * n_val * infer + machine.predict_trace_per_block * n_blocks + save + REPORT_SECONDS
    return out
