"""Training and inference speed: ours against tf_keras.applications, in one run.

    python -m workbench.bench.speed --variant regnety_200mf [--batch 32 --size 224]

Both models are compiled the same way (SGD with momentum, sparse
cross-entropy, each framework's default jit setting) and timed on the same
in-memory batch after warm-up; figures are medians over the timed steps.
"""
from __future__ import annotations

import argparse
import os

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="regnety_200mf")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps for ours")
    parser.add_argument("--reference-steps", type=int, default=2,
                        help="timed training steps for tf_keras.applications (slow on CPU)")
    parser.add_argument("--no-reference", action="store_true", help="time ours only")
    args = parser.parse_args(argv)

    import keras

    import workbench as wb
    from workbench.design import keras_applications_name
    from workbench.timing import throughput
    variant = wb.resolve_variant(args.variant)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, 1000, args.batch)
    shape = (args.size, args.size, 3)
    print(f"{variant}, batch {args.batch}, {args.size}x{args.size}, float32, "
          f"{os.cpu_count()} CPU cores")

    ours = throughput(wb.regnet(variant, input_shape=shape), x, y, args.steps, 2 * args.steps,
                   keras.optimizers.SGD(0.01, momentum=0.9))
    print(f"  workbench (Keras 3)        train {ours[0]:7.1f} img/s   inference {ours[1]:7.1f} img/s")
    if args.no_reference:
        return
    import tf_keras
    ref_model = getattr(tf_keras.applications, keras_applications_name(variant))(
        weights=None, input_shape=shape)
    ref = throughput(ref_model, x, y, args.reference_steps, 2 * args.steps,
                  tf_keras.optimizers.SGD(0.01, momentum=0.9))
    print(f"  tf_keras.applications      train {ref[0]:7.1f} img/s   inference {ref[1]:7.1f} img/s")
    print(f"  ratio (workbench / tf_keras) train {ours[0] / ref[0]:5.1f}x    inference "
          f"{ours[1] / ref[1]:5.1f}x")


if __name__ == "__main__":
    main()
