"""Training and inference speed: the workbench against timm, kimm and tf_keras.applications, in one run.

    python -m workbench.bench.speed --variants regnety_200mf,regnety_600mf [--batch 32 --size 224]
    python -m workbench.bench.speed --variants regnetz_b16,regnetz_d8        # RegNetZ: against timm

Every contender runs in its own process (TensorFlow and PyTorch do not share
one well), on the same random batch, after warm-up; figures are medians over
the timed steps. Training is one SGD-with-momentum step on cross-entropy;
inference is a forward pass in inference mode. The workbench runs in float32,
in mixed bfloat16 (inferring with BatchNorm folded into the convolutions, as
`wb.predict(..., precision="mixed_bfloat16")` does), and as
`finetune(precision="auto")` trains (its choice and
the timing behind it printed; a run infers in float32 either way), timm in float32 and under `torch.autocast("cpu",
torch.bfloat16)`, each once as installed and once "_tuned": with glibc's malloc
told to keep freed memory (`workbench.bench.KEEP_FREED_MEMORY`), without which
a PyTorch training step here takes page faults for about 1 GiB of activations.
Any contender takes the suffix (the workbench's figures do not move with it: it
faults about 2 MiB per step). Contenders that are not installed (timm, kimm)
are skipped with a note (kimm and tf_keras.applications have no RegNetZ).
Ratios compare each row with timm's best row on this machine.
"""
from __future__ import annotations

import argparse
import json
import os

from workbench.bench import TUNED, parse_contenders, random_batch, run_contender, split_tuned

CONTENDERS = ("workbench", "workbench_bf16", "workbench_auto", "timm", "timm_bf16", "kimm", "tf_keras")
DEFAULT = ("workbench", "workbench_bf16", "workbench_auto", "timm", "timm" + TUNED, "timm_bf16", "timm_bf16" + TUNED, "kimm", "tf_keras")


def _keras(contender, variant, batch, size, steps):
    import keras

    from workbench.models.design import keras_applications_name
    from workbench.utils.timing import throughput

    x, y = random_batch(batch, size)
    shape = (size, size, 3)
    if contender.startswith("workbench"):
        import workbench as wb
        from workbench.models.fold import fold_batchnorm
        from workbench.train.precision import choose_precision, set_precision
        from workbench.utils.runtime import training_graph_optimization

        model = wb.regnet(variant, input_shape=shape)
        policy, note = "mixed_bfloat16" if contender == "workbench_bf16" else "float32", None
        if contender == "workbench_auto":
            choice = choose_precision(model, "auto", batch)
            policy, note = choice.precision, f"auto chose {choice.precision}: {choice.reason}"
        set_precision(model, policy)
        with training_graph_optimization():  # as finetune trains
            train, _ = throughput(model, x, y, steps, 1, keras.optimizers.SGD(0.01, momentum=0.9))
        if contender == "workbench_auto":
            set_precision(model, "float32")  # auto is the training precision: a trained model infers in float32
        if contender == "workbench_bf16":  # bf16 inference folds BatchNorm first (workbench.models.fold)
            model = fold_batchnorm(model)
            set_precision(model, "mixed_bfloat16")
        _, infer = throughput(model, x, y, 1, 2 * steps, keras.optimizers.SGD(0.01, momentum=0.9))
        return train, infer, note
    if contender == "kimm":
        import kimm

        model = getattr(kimm.models, keras_applications_name(variant))(weights=None, input_shape=shape)
        return (*throughput(model, x, y, steps, 2 * steps, keras.optimizers.SGD(0.01, momentum=0.9)), None)
    import tf_keras

    model = getattr(tf_keras.applications, keras_applications_name(variant))(weights=None, input_shape=shape)
    return (*throughput(model, x, y, max(1, steps // 4), 2 * steps, tf_keras.optimizers.SGD(0.01, momentum=0.9)),
            None)


def _timm(contender, variant, batch, size, steps):
    import contextlib

    import timm
    import torch

    from workbench.models.published import timm_name
    from workbench.utils.timing import median_seconds

    torch.set_num_threads(os.cpu_count())
    x, y = random_batch(batch, size)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y)
    model = timm.create_model(timm_name(variant), pretrained=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if contender == "timm_bf16" \
        else contextlib.nullcontext

    def train_step():
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.inference_mode(), autocast():
            model(x)

    model.train()
    train = median_seconds(train_step, 1, steps)
    model.eval()
    infer = median_seconds(infer_step, 1, 2 * steps)
    return batch / train, batch / infer, None


def run_one(contender, variant, batch, size, steps):
    """(train img/s, inference img/s, a note or None) of one contender, in this process."""
    runner = _timm if contender.startswith("timm") else _keras
    return runner(contender, variant, batch, size, steps)


def _in_process(contender, variant, batch, size, steps):
    return run_contender("workbench.bench.speed", contender, ["--variants", variant, "--batch", str(batch),
                                                              "--size", str(size), "--steps", str(steps)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="regnety_200mf")
    parser.add_argument("--contenders", default=",".join(DEFAULT))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps (inference: twice as many)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        train, infer, note = run_one(args.one, args.variants, args.batch, args.size, args.steps)
        print(json.dumps({"train": train, "infer": infer, "note": note}))
        return
    contenders = parse_contenders(parser, args.contenders, CONTENDERS)
    from workbench.models.design import resolve_variant

    print(f"batch {args.batch}, {args.size}x{args.size}, {os.cpu_count()} CPU cores; img/s, medians; "
          f"each contender in its own process")
    for variant in (resolve_variant(v) for v in args.variants.split(",")):
        no_z = ("kimm", "tf_keras") if variant.startswith("regnetz") else ()
        rows = {c: (None, "has no RegNetZ") if split_tuned(c)[0] in no_z
                else _in_process(c, variant, args.batch, args.size, args.steps) for c in contenders}
        timm = [r for c, (r, _) in rows.items() if c.startswith("timm") and r]
        best = {k: max(r[k] for r in timm) for k in ("train", "infer")} if timm else None
        print(f"\n{variant:16s} {'train':>8s} {'infer':>8s}" + ("   vs timm's best: train  infer" if best else ""))
        for contender, (r, why) in rows.items():
            if r is None:
                print(f"  {contender:16s} {'-':>8s} {'-':>8s}   ({why})")
                continue
            ratio = f"   {r['train'] / best['train']:14.2f}x {r['infer'] / best['infer']:5.2f}x" if best else ""
            print(f"  {contender:16s} {r['train']:8.1f} {r['infer']:8.1f}{ratio}")
            if r.get("note"):
                print(f"  {'':16s} ({r['note']})")


if __name__ == "__main__":
    main()
