"""Where a step's time goes, by kernel: `python -m workbench.bench.ops --variant regnety_200mf`.

One training step (SGD with momentum, cross-entropy) and one inference pass on
a random batch, after warm-up, each profiled once: for the workbench
TensorFlow's profiler, the time of each op of the compiled step on the
runtime's threads (in inference, where Grappler runs, a convolution with its
BatchNorm and ReLU folded in is one `_MklNativeFusedConv2D`), for timm (when
installed) PyTorch's profiler, self CPU time per `aten::` op. Each runs in its
own process. Op times on two threads may overlap, so their sum can exceed the
wall time of the step.
"""
from __future__ import annotations

import argparse
import collections
import json

from workbench.bench import TUNED, parse_contenders, random_batch, run_contender, timed

CONTENDERS = ("workbench", "timm")
DEFAULT = ("workbench", "timm" + TUNED)


def workbench_ops(variant, batch, size, top):
    """{"train" | "infer": {"wall": s, "total": s in ops, "ops": [[op type, s, calls], ...top]}} of the workbench."""
    import glob
    import tempfile

    import keras
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    import workbench as wb
    from workbench.utils.runtime import training_graph_optimization

    x, y = random_batch(batch, size)
    model = wb.regnet(variant, input_shape=(size, size, 3))
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
        return _summary(wall, seconds, count, top)

    with training_graph_optimization():  # as finetune trains
        train = profile(lambda: model.train_on_batch(x, y))
    return {"train": train, "infer": profile(lambda: model.predict_on_batch(x))}


def timm_ops(variant, batch, size, top):
    """The same for timm, from PyTorch's profiler (self CPU time per aten op)."""
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

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.inference_mode():
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
        return _summary(wall, seconds, count, top)

    model.train()
    train = profile(train_step)
    model.eval()
    return {"train": train, "infer": profile(infer_step)}


def _summary(wall, seconds, count, top):
    ops = [[op, seconds[op], count[op]] for op, _ in seconds.most_common(top)]
    return {"wall": wall, "total": sum(seconds.values()), "ops": ops}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="regnety_200mf")
    parser.add_argument("--contenders", default=",".join(DEFAULT))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--top", type=int, default=8, help="ops listed per step")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run = {"workbench": workbench_ops, "timm": timm_ops}[args.one]
        print(json.dumps(run(args.variant, args.batch, args.size, args.top)))
        return
    contenders = parse_contenders(parser, args.contenders, CONTENDERS)
    from workbench.models.design import resolve_variant

    variant = resolve_variant(args.variant)
    print(f"{variant}, batch {args.batch}, {args.size}px, fp32; seconds of one profiled step")
    for contender in contenders:
        result, why = run_contender("workbench.bench.ops", contender, [
            "--variant", variant, "--batch", str(args.batch), "--size", str(args.size), "--top", str(args.top)])
        if result is None:
            print(f"\n{contender}: {why}")
            continue
        for step in ("train", "infer"):
            r = result[step]
            print(f"\n{contender}, {step}: {r['wall']:.3f} s wall, {r['total']:.3f} s in ops")
            for op, seconds, count in r["ops"]:
                print(f"  {op:32s} {seconds:7.3f} s {100 * seconds / r['total']:4.0f}%  ({count} calls)")


if __name__ == "__main__":
    main()
