"""What op determinism costs, and whether runs repeat without it: `python -m workbench.bench.determinism`.

Runs the same fine-tuning (sample dataset, all stages trainable, augmentation
on) in fresh processes, twice with TensorFlow op determinism and twice
without, alternating, and prints seconds per epoch and whether the two runs of
each setting gave identical histories.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

RUN = """
import json, sys, time
import workbench as wb
args = json.loads(sys.argv[1])
data = wb.load_folder(wb.sample_dataset(), image_size=args["size"], batch_size=32, seed=0, verbose=False)
model = wb.regnet(args["variant"], num_classes=data.num_classes, input_shape=(args["size"], args["size"], 3))
result = wb.finetune(model, data, epochs=args["epochs"] + 1, unfreeze="0:all", lr=2e-3, seed=0,
                     deterministic=args["deterministic"], verbose=0)
print(json.dumps({"history": result.history,
                  "seconds": [result.epoch_seconds[e] for e in sorted(result.epoch_seconds)][1:]}))
"""


def run(variant, size, epochs, deterministic):
    args = json.dumps(dict(variant=variant, size=size, epochs=epochs, deterministic=deterministic))
    out = subprocess.run([sys.executable, "-c", RUN, args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="regnety_200mf")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one untimed)")
    args = parser.parse_args(argv)
    results = {True: [], False: []}
    for _ in range(2):
        for deterministic in (True, False):
            results[deterministic].append(run(args.variant, args.size, args.epochs, deterministic))
    print(f"{args.variant}, {args.size}px, sample dataset (240 train images), batch 32, all stages trainable")
    for deterministic, runs in results.items():
        seconds = [s for r in runs for s in r["seconds"]]
        same = runs[0]["history"] == runs[1]["history"]
        print(f"  op determinism {'on ' if deterministic else 'off'}: {sum(seconds) / len(seconds):6.2f} s/epoch"
              f"   two runs identical: {same}   loss {runs[0]['history']['loss']}")


if __name__ == "__main__":
    main()
