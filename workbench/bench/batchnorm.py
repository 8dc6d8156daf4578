"""BatchNorm's training forms in bf16, by width: `python -m workbench.bench.batchnorm`.

    python -m workbench.bench.batchnorm --shapes 200MF,600MF [--batch 32]

Forward + backward (input, gamma, beta) of one training-mode BatchNorm on a
bf16 tensor, ms, medians of 10 calls after one: TF's fused op in bf16 as it is
(oneDNN's kernel is fast only for a multiple of 16 channels), the float32
detour (cast up, fused op, cast back), and the view `BatchNorm` takes off a
multiple of 16 (`workbench.models.batchnorm`); float32 on a float32 tensor
beside them. Only a CPU with native bf16 (AVX512-BF16, AMX) says anything about
bf16 speed: elsewhere bf16 is emulated.
"""
from __future__ import annotations

import argparse

import numpy as np

# (size, channels): the BatchNorm inputs of RegNetY's stages, 224 px (the first block's bn1 at twice the size).
SHAPES = {
    "200MF": [(112, 24), (56, 24), (56, 56), (28, 56), (28, 152), (14, 152), (14, 368), (7, 368)],
    "600MF": [(112, 48), (56, 48), (56, 112), (28, 112), (28, 256), (14, 256), (14, 608), (7, 608)],
}
FORMS = ("float32", "bf16 fused", "bf16 float32 detour", "bf16 view")


def measure(size, channels, batch, forms=FORMS):
    """{form: ms} of one forward + backward at (batch, size, size, channels)."""
    import tensorflow as tf

    from workbench.models.batchnorm import _float32, _fused, _training_on_view, view_parts
    from workbench.utils.timing import median_seconds

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.0, 2.0, (batch, size, size, channels)).astype("float32"))
    dy = tf.constant(rng.normal(0.0, 1.0, x.shape).astype("float32"))
    gamma, beta = tf.ones([channels]), tf.zeros([channels])
    k = view_parts(channels)

    def fused(x):
        return _fused(x, gamma, beta, 1e-5)

    normalize = {"float32": fused, "bf16 fused": fused, "bf16 float32 detour": lambda x: _float32(x, gamma, beta, 1e-5),
                 "bf16 view": lambda x: _training_on_view(x, gamma, beta, 1e-5, k)}
    result = {}
    for form in forms:
        dtype = tf.float32 if form == "float32" else tf.bfloat16

        @tf.function
        def step(x, dy, form=form):
            with tf.GradientTape() as tape:
                tape.watch([x, gamma, beta])
                y = normalize[form](x)[0]
            return tape.gradient(y, [x, gamma, beta], output_gradients=dy)

        args = tf.cast(x, dtype), tf.cast(dy, dtype)
        result[form] = 1000 * median_seconds(lambda: [t.numpy() for t in step(*args)], 1, 10)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="200MF,600MF", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    names = args.shapes.split(",")
    if set(names) - set(SHAPES):
        parser.error(f"unknown shapes {sorted(set(names) - set(SHAPES))}; choose from {', '.join(SHAPES)}")
    print(f"BatchNorm forward + backward, batch {args.batch}, ms (medians)")
    print(f"{'shapes':8s} {'HxW x C':>12s}" + "".join(f"{form:>21s}" for form in FORMS))
    for name in names:
        for size, channels in SHAPES[name]:
            ms = measure(size, channels, args.batch)
            print(f"{name:8s} {f'{size}x{size} x {channels}':>12s}" + "".join(f"{ms[f]:21.2f}" for f in FORMS))


if __name__ == "__main__":
    main()
