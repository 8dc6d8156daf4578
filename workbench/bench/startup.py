"""Time to the first training step, and the cost of an unfreeze: `python -m workbench.bench.startup`.

Each contender runs in its own fresh process, side by side: the workbench
(build the model, trace the train step, first call) and timm on PyTorch
(build, first step; nothing to trace), both with AdamW on one in-memory batch;
timm also "_tuned", with glibc's malloc keeping freed memory (see
`workbench.bench.KEEP_FREED_MEMORY` and `workbench.bench.speed`). Then a
staged unfreeze the way `finetune` runs it (head only, then stage4, then
everything; frozen BatchNorm in inference mode in both): the extra seconds of
the first step after each change over a steady step. The workbench's trace
time is CPU seconds of its process (robust to other load); the rest is wall
time.

A first step also touches memory the process never used (activations kept
for the backward pass, gradients, optimizer slots): the growth of the peak
resident set is printed, and a control process times writing as much fresh
memory with numpy: what fresh memory costs on this machine. It does not
predict a framework's first step (on a virtual machine the same program's
first step can halve between runs while the control holds), so compare the
contenders within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

from workbench.bench import TUNED, parse_contenders, run_contender, timed

CONTENDERS = ("workbench", "timm")
DEFAULT = ("workbench", "timm", "timm" + TUNED)
PHASES = ("head only", "+stage4", "+all")


def _cpu(fn):
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _transitions(set_phase, step) -> list[float]:
    """For each of PHASES, the extra seconds of the first step after the change over a steady step."""
    out = []
    for phase in PHASES:
        set_phase(phase)
        change, _ = timed(step)
        out.append(change - float(np.median([timed(step)[0] for _ in range(2)])))
    return out


def _workbench(variant, size, batch) -> dict:
    import keras
    import tensorflow as tf

    import workbench as wb
    from workbench.models.contract import trainable_candidates
    from workbench.utils.runtime import training_graph_optimization
    from workbench.train.unfreeze import GradualUnfreezing

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = keras.ops.one_hot(rng.integers(0, 5, batch), 5)
    with training_graph_optimization():  # as in finetune
        build, model = timed(lambda: wb.regnet(variant, num_classes=5, input_shape=(size, size, 3)))
        opt = wb.DiscriminativeOptimizer(keras.optimizers.AdamW(1e-3), model)
        model.compile(opt, keras.losses.CategoricalCrossentropy())
        opt.build(trainable_candidates(model))
        step = tf.function(model.train_step, reduce_retracing=True, autograph=False)
        spec = (tf.TensorSpec(x.shape, tf.float32), tf.TensorSpec(y.shape, tf.float32))
        trace, _ = _cpu(lambda: step.get_concrete_function(spec))
        before = _peak_gb()
        first, _ = timed(lambda: step((x, y)))
        fresh = _peak_gb() - before
        steady = float(np.median([timed(lambda: step((x, y)))[0] for _ in range(3)]))
        staged = GradualUnfreezing({0: "head", 1: "stage4", 2: "all"}, verbose=0)
        staged.set_model(model)
        transitions = _transitions(lambda phase: staged.on_epoch_begin(PHASES.index(phase)),
                                   lambda: model.train_on_batch(x, y))
    return dict(build=build, trace=trace, first=first, steady=steady, fresh_gb=fresh, transitions=transitions)


def _timm(variant, size, batch) -> dict:
    import timm
    import torch

    from workbench.models.published import timm_name

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0, 255, (batch, 3, size, size)).astype("float32"))
    y = torch.from_numpy(rng.integers(0, 5, batch))
    build, model = timed(lambda: timm.create_model(timm_name(variant), pretrained=False, num_classes=5))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    before = _peak_gb()
    first, _ = timed(step)
    fresh = _peak_gb() - before
    steady = float(np.median([timed(step)[0] for _ in range(3)]))
    stages = [model.stem, *(getattr(model, f"s{i}") for i in range(1, 5))] if hasattr(model, "s4") \
        else [model.stem, *model.stages]
    head = [model.final_conv, model.head]

    def set_phase(phase):
        trainable = {"head only": head, "+stage4": head + stages[-1:], "+all": head + stages}[phase]
        for module in stages + head:
            on = any(module is t for t in trainable)
            module.requires_grad_(on)
            module.train(on)  # frozen BatchNorm in inference mode, as in the workbench

    transitions = _transitions(set_phase, step)
    return dict(build=build, trace=0.0, first=first, steady=steady, fresh_gb=fresh, transitions=transitions)


def _touch(gb) -> dict:
    """Seconds to write `gb` GB of memory this process never used (kept, in 256 MiB blocks)."""
    n = max(1, round(gb * 4))
    start = time.perf_counter()
    blocks = [np.ones(2**25) for _ in range(n)]
    seconds = time.perf_counter() - start
    del blocks
    return {"gb": n / 4, "seconds": seconds}


def _in_process(contender, variant, size, batch, gb=0.0):
    return run_contender("workbench.bench.startup", contender, ["--variant", variant, "--size", str(size),
                                                                "--batch", str(batch), "--gb", str(gb)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="regnety_200mf")
    parser.add_argument("--contenders", default=",".join(DEFAULT))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--gb", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        if args.one == "touch":
            print(json.dumps(_touch(args.gb)))
        else:
            print(json.dumps({"workbench": _workbench, "timm": _timm}[args.one](args.variant, args.size, args.batch)))
        return
    contenders = parse_contenders(parser, args.contenders, CONTENDERS)
    from workbench.models.design import resolve_variant

    variant = resolve_variant(args.variant)
    rows = {c: _in_process(c, variant, args.size, args.batch) for c in contenders}
    ran = {c: r for c, (r, _) in rows.items() if r}
    print(f"{variant}, {args.size}px, batch {args.batch}, fp32, AdamW; seconds; each contender in its own "
          f"process, {os.cpu_count()} CPU cores")
    print(f"  {'':34s}" + "".join(f"{c:>11s}" for c in rows))

    def line(label, value):
        print(f"  {label:34s}" + "".join(f"{value(ran[c]) if c in ran else '-':>11s}" for c in rows))

    line("build the model", lambda r: f"{r['build']:.2f}")
    line("trace the train step (CPU s)", lambda r: f"{r['trace']:.2f}" if r["trace"] else "-")
    line("first call (one step included)", lambda r: f"{r['first']:.2f}")
    line("time to the first step", lambda r: f"{r['build'] + r['trace'] + r['first']:.2f}")
    line("  fresh memory it touched (GB)", lambda r: f"{r['fresh_gb']:.2f}")
    line("a steady step, all stages", lambda r: f"{r['steady']:.2f}")
    for i, phase in enumerate(PHASES):
        line(f"unfreeze to {phase} (extra s)", lambda r, i=i: f"{r['transitions'][i]:.2f}")
    for contender, (r, why) in rows.items():
        if r is None:
            print(f"  ({contender}: {why})")
    if ran:
        gb = max(r["fresh_gb"] for r in ran.values())
        touch, _ = _in_process("touch", variant, args.size, args.batch, gb)
        if touch:
            print(f"Control: writing {touch['gb']:.2f} GB of fresh memory with numpy takes {touch['seconds']:.2f} s "
                  f"in a fresh process on this machine.")


if __name__ == "__main__":
    main()
