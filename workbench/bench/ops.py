"""Where a step's time goes, by kernel: `python -m workbench.bench.ops --variant regnety_200mf`.

    python -m workbench.bench.ops --contenders workbench --precision float32,mixed_bfloat16

One training step (SGD with momentum, cross-entropy) and one inference pass on
a random batch, after warm-up, each profiled once: for the workbench
TensorFlow's profiler, the time of each op of the compiled step on the
runtime's threads (in inference, where Grappler runs, a convolution with its
BatchNorm and ReLU folded in is one `_MklNativeFusedConv2D`), for timm (when
installed) PyTorch's profiler, self CPU time per `aten::` op. Each runs in its
own process, once per `--precision` (the workbench through
`workbench.train.precision.set_precision`, inferring in a half precision on a
copy with BatchNorm folded into the convolutions, as `wb.predict` does; timm
under `torch.autocast`). Op
times on two threads may overlap, so their sum can exceed the wall time of the
step. The table puts the precisions side by side: step wall times, the kernel
groups of `GROUPS` (seconds; in inference, convolutions with and without
their BatchNorm and ReLU folded in, as calls), then each step's top ops.
"""
from __future__ import annotations

import argparse
import collections
import json
import re

from workbench.bench import TUNED, parse_contenders, random_batch, run_contender, timed

CONTENDERS = ("workbench", "timm")
DEFAULT = ("workbench", "timm" + TUNED)
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# (row, step, op-name pattern, "s" or "calls"): TF's op types, with or without oneDNN's "_MklNative" prefix.
GROUPS = (
    ("conv forward", "train", r"^(_MklNative)?(Conv2D|DepthwiseConv2dNative)(WithBias)?$", "s"),
    ("conv backprop input", "train", r"^(_MklNative)?(Conv2D|DepthwiseConv2dNative)BackpropInput$", "s"),
    ("conv backprop filter", "train", r"^(_MklNative)?(Conv2D|DepthwiseConv2dNative)BackpropFilter(WithBias)?$", "s"),
    ("FusedBatchNorm", "train", r"FusedBatchNorm(V\d|Ex)?$", "s"),
    ("FusedBatchNormGrad", "train", r"FusedBatchNormGrad(V\d)?$", "s"),
    ("Cast", "train", r"^Cast$", "s"),
    ("infer: FusedBatchNorm", "infer", r"FusedBatchNorm(V\d|Ex)?$", "s"),
    ("infer: Cast", "infer", r"^Cast$", "s"),
    ("infer: fused convs", "infer", r"Fused(Conv2D|DepthwiseConv2dNative)", "calls"),
    ("infer: plain convs", "infer", r"^(_MklNative)?(Conv2D|DepthwiseConv2dNative)(WithBias)?$", "calls"),
)


def workbench_ops(variant, batch, size, top, precision="float32"):
    """{"train" | "infer": {"wall": s, "total": s in ops, "ops": [[op type, s, calls], ...top],
    "groups": {row of GROUPS: s or calls}}} of the workbench computing in `precision`."""
    import glob
    import tempfile

    import keras
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    import workbench as wb
    from workbench.models.fold import fold_batchnorm
    from workbench.train.precision import set_precision
    from workbench.utils.runtime import training_graph_optimization

    x, y = random_batch(batch, size)
    model = wb.regnet(variant, input_shape=(size, size, 3))
    if precision != "float32":
        set_precision(model, precision)
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")

    def profile(step):
        for _ in range(3):
            step()
        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir)
            try:
                wall, _ = timed(step)
            finally:
                tf.profiler.experimental.stop()
            space = xplane_pb2.XSpace()
            with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
                space.ParseFromString(f.read())
        seconds, count = collections.Counter(), collections.Counter()
        for plane in space.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):  # the runtime's threads
                    continue
                for event in line.events:  # ops are "node:type"; "Class::method" is the executor's own
                    name = plane.event_metadata[event.metadata_id].name
                    if ":" in name and "::" not in name:
                        op = name.rsplit(":", 1)[1]
                        seconds[op] += event.duration_ps / 1e12
                        count[op] += 1
        return _summary(wall, seconds, count, top, GROUPS)

    with training_graph_optimization():  # as finetune trains
        train = profile(lambda: model.train_on_batch(x, y))
    if precision != "float32":  # as wb.predict infers in a half precision
        model = fold_batchnorm(model)
        set_precision(model, precision)
    return {"train": train, "infer": profile(lambda: model.predict_on_batch(x))}


def timm_ops(variant, batch, size, top, precision="float32"):
    """The same for timm, from PyTorch's profiler (self CPU time per aten op), under autocast in mixed precisions."""
    import contextlib
    import os

    import timm
    import torch
    from torch.profiler import profile as torch_profile

    from workbench.models.published import timm_name

    torch.set_num_threads(os.cpu_count())
    x, y = random_batch(batch, size)
    x, y = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    model = timm.create_model(timm_name(variant), pretrained=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    half = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast("cpu", dtype=half)) if half else contextlib.nullcontext

    def train_step():
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.inference_mode(), autocast():
            model(x)

    def profile(step):
        for _ in range(3):
            step()
        with torch_profile() as prof:
            wall, _ = timed(step)
        seconds, count = collections.Counter(), collections.Counter()
        for event in prof.key_averages():
            if event.self_cpu_time_total > 0:
                seconds[event.key] += event.self_cpu_time_total / 1e6
                count[event.key] += event.count
        return _summary(wall, seconds, count, top, ())

    model.train()
    train = profile(train_step)
    model.eval()
    return {"train": train, "infer": profile(infer_step)}


def _summary(wall, seconds, count, top, groups):
    ops = [[op, seconds[op], count[op]] for op, _ in seconds.most_common(top)]
    rows = {}
    for row, _, pattern, unit in groups:
        matched = [op for op in seconds if re.search(pattern, op)]
        rows[row] = sum((seconds if unit == "s" else count)[op] for op in matched)
    return {"wall": wall, "total": sum(seconds.values()), "ops": ops, "groups": rows}


def _print_side_by_side(contender, results):
    """The precisions of one contender in columns: wall times, the kernel groups, then each step's top ops."""
    names = list(results)
    print(f"\n{contender}{'':26s}" + "".join(f"{n:>16s}" for n in names))
    for step in ("train", "infer"):
        print(f"  {step + ' step wall (s)':30s}" + "".join(f"{results[n][step]['wall']:16.3f}" for n in names))
    for row, step, _, unit in GROUPS:
        if row in results[names[0]][step]["groups"]:
            values = [results[n][step]["groups"][row] for n in names]
            cells = "".join(f"{v:16.3f}" if unit == "s" else f"{v:16d}" for v in values)
            print(f"  {row + (' (s)' if unit == 's' else ' (calls)'):30s}{cells}")
    for name in names:
        for step in ("train", "infer"):
            r = results[name][step]
            print(f"\n{contender}, {name}, {step}: {r['wall']:.3f} s wall, {r['total']:.3f} s in ops")
            for op, seconds, count in r["ops"]:
                print(f"  {op:32s} {seconds:7.3f} s {100 * seconds / r['total']:4.0f}%  ({count} calls)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="regnety_200mf")
    parser.add_argument("--contenders", default=",".join(DEFAULT))
    parser.add_argument("--precision", default="float32",
                        help=f"comma-separated, side by side: {', '.join(PRECISIONS)}")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--top", type=int, default=8, help="ops listed per step")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run = {"workbench": workbench_ops, "timm": timm_ops}[args.one]
        print(json.dumps(run(args.variant, args.batch, args.size, args.top, args.precision)))
        return
    contenders = parse_contenders(parser, args.contenders, CONTENDERS)
    precisions = args.precision.split(",")
    if set(precisions) - set(PRECISIONS):
        parser.error(f"unknown precision(s) {sorted(set(precisions) - set(PRECISIONS))}; choose from {PRECISIONS}")
    from workbench.models.design import resolve_variant

    variant = resolve_variant(args.variant)
    print(f"{variant}, batch {args.batch}, {args.size}px; seconds of one profiled step, each in its own process")
    for contender in contenders:
        results = {}
        for precision in precisions:
            result, why = run_contender("workbench.bench.ops", contender, [
                "--variant", variant, "--batch", str(args.batch), "--size", str(args.size),
                "--top", str(args.top), "--precision", precision])
            if result is None:
                print(f"\n{contender}, {precision}: {why}")
            else:
                results[precision] = result
        if results:
            _print_side_by_side(contender, results)


if __name__ == "__main__":
    main()
