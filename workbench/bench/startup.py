"""Time to the first training step, and the cost of an unfreeze: `python -m workbench.bench.startup`.

Splits the first step into building the model, tracing the train step
(Python: layers, gradient graph, optimizer), and the first call (graph set-up
and one step), then times a staged unfreeze the way `finetune` runs it (head
only, then stage4, then everything): the extra seconds of the first step
after each change over a steady step. Trace times are CPU seconds of this
process (robust to other load); the rest is wall time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _wall(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _cpu(fn):
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def measure(variant, size, batch):
    """Seconds: build, trace, first call, steady step, and (phase, transition) pairs."""
    import keras
    import tensorflow as tf

    import workbench as wb
    from workbench.contract import trainable_candidates
    from workbench.unfreeze import GradualUnfreezing

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = keras.ops.one_hot(rng.integers(0, 5, batch), 5)
    build, model = _wall(lambda: wb.regnet(variant, num_classes=5, input_shape=(size, size, 3)))
    opt = wb.DiscriminativeOptimizer(keras.optimizers.AdamW(1e-3), model)
    model.compile(opt, keras.losses.CategoricalCrossentropy())
    opt.build(trainable_candidates(model))
    step = tf.function(model.train_step, reduce_retracing=True, autograph=False)
    spec = (tf.TensorSpec(x.shape, tf.float32), tf.TensorSpec(y.shape, tf.float32))
    trace, _ = _cpu(lambda: step.get_concrete_function(spec))
    first, _ = _wall(lambda: step((x, y)))
    steady = float(np.median([_wall(lambda: step((x, y)))[0] for _ in range(3)]))
    transitions = []
    staged = GradualUnfreezing({0: "head", 1: "stage4", 2: "all"}, verbose=0)
    staged.set_model(model)
    for epoch, phase in enumerate(("head only", "+stage4", "+all")):
        staged.on_epoch_begin(epoch)
        change, _ = _wall(lambda: model.train_on_batch(x, y))
        again = float(np.median([_wall(lambda: model.train_on_batch(x, y))[0] for _ in range(2)]))
        transitions.append((phase, change - again, again))
    return dict(build=build, trace=trace, first=first, steady=steady, transitions=transitions)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="regnety_200mf")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    from workbench.runtime import training_graph_optimization

    with training_graph_optimization():  # as in finetune
        r = measure(args.variant, args.size, args.batch)
    print(f"{args.variant}, {args.size}px, batch {args.batch}, fp32")
    print(f"  build model          {r['build']:6.2f} s")
    print(f"  trace train step     {r['trace']:6.2f} s CPU (Python: layers, gradient graph, optimizer)")
    print(f"  first call           {r['first']:6.2f} s   (graph set-up and one step; a steady step takes "
          f"{r['steady']:.2f} s)")
    print(f"  time to first step   {r['build'] + r['trace'] + r['first']:6.2f} s")
    for phase, cost, steady in r["transitions"]:
        print(f"  unfreeze to {phase:10s} costs {cost:5.2f} s over a steady step of {steady:.2f} s")


if __name__ == "__main__":
    main()
