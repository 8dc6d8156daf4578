"""Benchmark exact grouped-conv formulations on this machine.

``python -m workbench.bench.conv [--xla] [--shapes 200MF,600MF,gw24] [--forms ...]``
prints forward and forward+backward (w.r.t. input and kernel) ms, best of a few
runs, batch 32, fp32. Wall time is noisy on a shared host; CPU time is printed too.
"""

import argparse
import time

import tensorflow as tf

from workbench.models.layers import block_diagonal_kernel, default_groups_per_conv, grouped_conv2d

# (size, channels, stride, groups): grouped-conv inputs of the RegNet stages.
SHAPES = {
    "200MF": [(112, 24, 2, 3), (56, 56, 2, 7), (28, 152, 2, 19), (14, 152, 1, 19),
              (14, 368, 2, 46), (7, 368, 1, 46)],
    "600MF": [(112, 48, 2, 3), (56, 112, 2, 7), (28, 256, 2, 16), (14, 256, 1, 16),
              (14, 608, 2, 38), (7, 608, 1, 38)],
    "gw24": [(56, 120, 2, 5), (28, 336, 2, 14), (7, 888, 1, 37)],
    "gw56": [(56, 224, 2, 4), (7, 2016, 1, 36)],
    # RegNetZ: expanded widths, many groups (B16 at 224 px, group width 16; D8 at 256 px, group width 8).
    "Z-B16": [(112, 96, 2, 6), (56, 144, 1, 9), (28, 288, 1, 18), (14, 576, 1, 36), (7, 864, 1, 54)],
    "Z-D8": [(64, 256, 1, 32), (32, 512, 1, 64), (16, 1024, 1, 128), (8, 1536, 1, 192)],
}


def _native(x, k, s, g):
    return tf.nn.conv2d(x, k, s, "SAME")


def _depthwise_sum(x, k, s, g):
    kh, kw, gi, co = k.shape
    go = co // g
    d = tf.reshape(tf.transpose(tf.reshape(k, (kh, kw, gi, g, go)), (0, 1, 3, 2, 4)),
                   (kh, kw, g * gi, go))
    y = tf.nn.depthwise_conv2d(x, d, (1, s, s, 1), "SAME")
    sh = tf.shape(y)
    y = tf.reduce_sum(tf.reshape(y, tf.concat([sh[:3], [g, gi, go]], 0)), 4)
    return tf.reshape(y, tf.concat([sh[:3], [co]], 0))


def _im2col(x, k, s, g):
    kh, kw, gi, co = k.shape
    h, w = x.shape[1], x.shape[2]
    ho, wo = -(-h // s), -(-w // s)

    def pad(n, o):
        tot = max((o - 1) * s + kh - n, 0)
        return [tot // 2, tot - tot // 2]

    xp = tf.pad(x, [[0, 0], pad(h, ho), pad(w, wo), [0, 0]])
    taps = [xp[:, i:i + (ho - 1) * s + 1:s, j:j + (wo - 1) * s + 1:s, :]
            for i in range(kh) for j in range(kw)]
    p = tf.reshape(tf.stack(taps, 3), (-1, kh * kw, g, gi))
    y = tf.einsum("pkgi,kigo->pgo", p, tf.reshape(k, (kh * kw, gi, g, co // g)))
    return tf.reshape(y, (-1, ho, wo, co))


FORMS = {
    "native": _native,
    "depthwise_sum": _depthwise_sum,
    "im2col": _im2col,
    "split": lambda x, k, s, g: grouped_conv2d(x, k, s, g, 1),
    "chunk2": lambda x, k, s, g: grouped_conv2d(x, k, s, g, 2),
    "chunk4": lambda x, k, s, g: grouped_conv2d(x, k, s, g, 4),
    "blockdiag": lambda x, k, s, g: tf.nn.conv2d(x, block_diagonal_kernel(k, g), s, "SAME"),
    "auto": lambda x, k, s, g: grouped_conv2d(x, k, s, g),
}
# Too slow to run by default (seconds per call, or fails): pass --forms to include.
SLOW = {"native", "depthwise_sum", "im2col"}


def _time(fn, args, reps=6, budget=1.0):
    def run():
        out = fn(*args)
        for o in tf.nest.flatten(out):
            o.numpy()

    run()
    wall, cpu = [], []
    end = time.perf_counter() + budget
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        if time.perf_counter() > end:
            break
    return 1000 * min(wall), 1000 * min(cpu)


def bench(form, shape, batch, xla):
    size, c, s, g = shape
    f = FORMS[form]
    x = tf.random.normal((batch, size, size, c))
    k = tf.random.normal((3, 3, c // g, c)) * 0.1
    o = -(-size // s)
    dy = tf.random.normal((batch, o, o, c))
    fwd = tf.function(lambda x, k: f(x, k, s, g), jit_compile=xla)

    @tf.function(jit_compile=xla)
    def fwd_bwd(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = f(x, k, s, g)
        return tape.gradient(y, [x, k], output_gradients=dy)

    try:
        return _time(fwd, (x, k)) + _time(fwd_bwd, (x, k))
    except (tf.errors.OpError, ValueError) as e:
        print(f"    {form}: {type(e).__name__}: {str(e).splitlines()[0][:90]}")
        return (float("nan"),) * 4


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="200MF,600MF")
    p.add_argument("--forms", default="split,chunk2,blockdiag,auto")
    p.add_argument("--xla", action="store_true", help="also time under jit_compile=True")
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args(argv)
    modes = [False, True] if a.xla else [False]
    print(f"batch {a.batch}, fp32, ms (best of <=6): fwd wall/cpu, fwd+bwd wall/cpu")
    for key in a.shapes.split(","):
        for shape in SHAPES[key]:
            size, c, s, g = shape
            auto = default_groups_per_conv(g, c // g)
            print(f"{key} {size}x{size}x{c} s{s} G={g} (auto: {auto} groups/conv)")
            for xla in modes:
                for form in a.forms.split(","):
                    r = bench(form, shape, a.batch, xla)
                    print(f"  {'xla ' if xla else ''}{form:14s} fwd {r[0]:7.1f} /{r[1]:7.1f}"
                          f"   fwd+bwd {r[2]:7.1f} /{r[3]:7.1f}", flush=True)


if __name__ == "__main__":
    main()
