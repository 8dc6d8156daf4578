"""Exact grouped convolution that is fast to train on CPU.

TensorFlow has no CPU gradient kernel for grouped ``Conv2D`` (without XLA,
``keras.layers.Conv2D(groups=G)`` fails in training with "Gradients for grouped
convolutions are not supported on CPU"; with XLA it works but is 50-500x too
slow: 28x28x152, G=19, batch 32 takes ~1.9 s forward+backward). ``GroupConv2D``
therefore computes the same function as a few ordinary convolutions: the groups
are split into chunks of ``groups_per_conv`` consecutive groups, and each chunk
is one dense ``tf.nn.conv2d`` whose kernel is the block-diagonal expansion of
that chunk's grouped kernel (``tile`` times a constant 0/1 mask, so output and
both gradients are exact up to float summation order). ``groups_per_conv=1`` is
the plain per-group split, ``groups_per_conv=groups`` one block-diagonal conv.
Dense convs with 8 input channels are overhead-bound, while block-diagonal
expansion multiplies FLOPs by the chunk size, so the optimum is chunks of about
16 input channels (default: ``16 // group_width`` groups per conv, at least 1;
one conv if ``in_channels <= 32``; group width >= 16 thus uses the plain split,
which measured best there). Measured forward + backward, batch 32, fp32, 2 CPU
cores, no XLA (what ``fit`` uses on CPU: ``jit_compile="auto"`` resolves to
False on CPU-only hosts), RegNetY-200MF shapes, ms: 112x112x24/s2/G3 split 80
-> chunk3 60; 28x28x152/s2/G19 29 -> 23; 14x14x152/G19 21 -> 18; 7x7x368/G46 19
-> 14.5; about 0.28 s per batch for all 16 grouped convs (whole RegNetY-200MF-
like model: ~19.5 img/s training, ~85 img/s inference; the rest of the model
now dominates). Depthwise-then-sum (slow backward, 12-40 s under XLA), im2col
from 9 shifted slices + batched matmul (3-10x slower) and full block-diagonal
for many groups (3-6x slower) all lost; host timings are noisy (shared 2
cores), re-measure with ``python -m workbench.bench.conv``. The forward graph
is plain Split/Tile/Mul/Conv2D/ConcatV2 and converts to TFLite (CONV_2D, TILE,
MUL). On GPU/TPU the native grouped op is used (``implementation="auto"``).
"""

import numpy as np
import keras
import tensorflow as tf


def default_groups_per_conv(groups, group_in_channels):
    if groups * group_in_channels <= 32:
        return groups
    return int(min(groups, max(1, 16 // group_in_channels)))


def _accelerator_present():
    return any(d.device_type in ("GPU", "TPU") for d in tf.config.list_logical_devices())


def block_diagonal_kernel(kernel, groups):
    """Dense ``(kh, kw, groups*gi, co)`` kernel equivalent to a grouped kernel
    ``(kh, kw, gi, co)`` (off-diagonal blocks are exact zeros)."""
    if groups == 1:
        return kernel
    gi, co = kernel.shape[2], kernel.shape[3]
    go = co // groups
    mask = np.kron(np.eye(groups), np.ones((gi, go)))
    return tf.tile(kernel, [1, 1, groups, 1]) * tf.constant(mask, kernel.dtype)


def grouped_conv2d(x, kernel, strides, groups, groups_per_conv=None, padding="SAME"):
    """Grouped conv as ceil(groups/groups_per_conv) dense
    convs with block-diagonal kernels. ``kernel`` has the standard Keras layout
    ``(kh, kw, in_channels // groups, filters)``."""
    gi, co = kernel.shape[2], kernel.shape[3]
    go = co // groups
    if groups == 1:
        return tf.nn.conv2d(x, kernel, strides, padding)
    if gi == 1 and go == 1:  # depthwise: TF has a fast CPU kernel for it
        dw = tf.reshape(kernel, (kernel.shape[0], kernel.shape[1], co, 1))
        return tf.nn.depthwise_conv2d(x, dw, (1, strides, strides, 1), padding)
    c = groups_per_conv or default_groups_per_conv(groups, gi)
    sizes = [c] * (groups // c) + ([groups % c] if groups % c else [])
    if len(sizes) == 1:
        return tf.nn.conv2d(x, block_diagonal_kernel(kernel, groups), strides, padding)
    xs = tf.split(x, [n * gi for n in sizes], axis=-1)
    ks = tf.split(kernel, [n * go for n in sizes], axis=-1)
    ys = [
        tf.nn.conv2d(xi, block_diagonal_kernel(ki, n), strides, padding)
        for xi, ki, n in zip(xs, ks, sizes)
    ]
    return tf.concat(ys, axis=-1)


@keras.saving.register_keras_serializable(package="workbench")
class GroupConv2D(keras.layers.Layer):
    """Drop-in for ``keras.layers.Conv2D(filters, kernel_size, strides,
    padding, groups=groups)`` (padding "same" or "valid") (channels_last, TensorFlow backend) with a
    fast exact CPU path. The ``kernel`` variable has the same shape as Conv2D's.

    ``implementation``: ``"auto"`` (native grouped op if a GPU/TPU is visible,
    else ``"chunked"``), ``"native"`` or ``"chunked"``. ``groups_per_conv``
    sets the chunk size of the chunked path (default: ~24 input channels).
    """

    def __init__(self, filters, kernel_size=3, strides=1, groups=1, padding="same", use_bias=False,
                 kernel_initializer="he_normal", bias_initializer="zeros",
                 kernel_regularizer=None, implementation="auto",
                 groups_per_conv=None, **kwargs):
        super().__init__(**kwargs)
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        st = strides if isinstance(strides, int) else tuple(strides)
        if not isinstance(st, int):
            if len(set(st)) != 1:
                raise ValueError(f"Only equal strides are supported, got {strides}")
            st = st[0]
        if filters % groups:
            raise ValueError(f"filters={filters} not divisible by groups={groups}")
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if implementation not in ("auto", "native", "chunked"):
            raise ValueError(f"Unknown implementation {implementation!r}")
        self.filters = int(filters)
        self.kernel_size = tuple(int(k) for k in ks)
        self.strides = int(st)
        self.groups = int(groups)
        self.padding = padding
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.implementation = implementation
        self.groups_per_conv = None if groups_per_conv is None else int(groups_per_conv)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        cin = input_shape[-1]
        if cin is None or cin % self.groups:
            raise ValueError(f"Input channels {cin} not divisible by groups={self.groups}")
        self.kernel = self.add_weight(
            name="kernel", shape=self.kernel_size + (cin // self.groups, self.filters),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,),
                                        initializer=self.bias_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: cin})

    def _use_native(self):
        if self.implementation != "auto":
            return self.implementation == "native"
        return _accelerator_present()

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        kernel = tf.cast(self.kernel, self.compute_dtype)
        if self._use_native() or self.groups == 1:
            y = tf.nn.conv2d(x, kernel, self.strides, self.padding.upper())
        else:
            y = grouped_conv2d(x, kernel, self.strides, self.groups, self.groups_per_conv,
                               self.padding.upper())
        if self.use_bias:
            y = tf.nn.bias_add(y, tf.cast(self.bias, self.compute_dtype))
        return y

    def compute_output_shape(self, input_shape):
        def out(n, k):
            if n is None:
                return None
            return -(-(n - k + 1 if self.padding == "valid" else n) // self.strides)
        return (input_shape[0], out(input_shape[1], self.kernel_size[0]),
                out(input_shape[2], self.kernel_size[1]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
            groups=self.groups, padding=self.padding, use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            implementation=self.implementation, groups_per_conv=self.groups_per_conv)
        return config


@keras.saving.register_keras_serializable(package="workbench")
class BatchNorm(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TF's fused kernel on 4-D inputs.

    Same weights, semantics and moving-statistics update (biased batch
    variance, as Keras); the fused op and its gradient make one pass over the
    data where Keras' generic path makes several (about a fifth of a
    RegNetY-200MF training step on CPU). Other ranks, masks and renorm use Keras' path.
    """

    def call(self, inputs, training=None, mask=None):
        if len(inputs.shape) != 4 or mask is not None or self.renorm or self.axis not in (-1, 3) \
                or not (self.scale and self.center):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, self.compute_dtype)
        if x.dtype == tf.float64:
            return super().call(inputs, training=training, mask=mask)
        train = bool(training) and self.trainable
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
            mean=None if train else tf.cast(self.moving_mean, tf.float32),
            variance=None if train else tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon, is_training=train)
        if train:
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
            variance = variance * tf.maximum(n - 1.0, 1.0) / n        # the op returns it unbiased
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1 - m))
            self.moving_variance.assign(
                self.moving_variance * m + tf.cast(variance, self.moving_variance.dtype) * (1 - m))
        return y
