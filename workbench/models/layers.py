"""Exact grouped convolution that is fast to train on CPU.

Where TensorFlow runs oneDNN kernels on the CPU (the workbench turns them on
for x86-64, see `workbench.utils.runtime`), the native grouped ``Conv2D`` has a
CPU gradient, and ``GroupConv2D`` uses it: one op per layer, a small training
graph, and the fastest form measured (docs/speed.md, "Grouped convolutions").

Elsewhere (TensorFlow's Eigen kernels: ``TF_ENABLE_ONEDNN_OPTS=0``, or CPUs
oneDNN does not serve) a grouped ``Conv2D`` has no CPU gradient ("Gradients
for grouped convolutions are not supported on CPU"; under XLA it is 50-500x
too slow). ``GroupConv2D`` then computes the same function as a few ordinary
convolutions: the groups are split into chunks of ``groups_per_conv``
consecutive groups, and each chunk is one dense ``tf.nn.conv2d`` whose kernel
is the block-diagonal expansion of that chunk's grouped kernel (``tile`` times
a constant 0/1 mask, so output and both gradients are exact up to float
summation order). Chunks of about 16 input channels measured best (default:
``16 // group_width`` groups per conv, at least 1; one conv if
``in_channels <= 32``); ``python -m workbench.bench.conv`` re-measures the
forms. The chunked graph is plain Split/Tile/Mul/Conv2D/ConcatV2, which every
TensorFlow build runs and TFLite converts, so exports are traced in it
(`portable_graphs`). On GPU/TPU the native grouped op is used.

``PointwiseConv2D`` is a 1x1 ``Conv2D`` computed as one matmul on a 1x1 input
(squeeze-and-excitation), where oneDNN's per-call cost dominates.
"""

import contextlib
import threading

import numpy as np
import keras
import tensorflow as tf

from workbench.utils.runtime import accelerator_present, cpu_grouped_conv_gradients

_TRACED = threading.local()  # the form every GroupConv2D on "auto" traces, when set


def default_groups_per_conv(groups, group_in_channels):
    if groups * group_in_channels <= 32:
        return groups
    return int(min(groups, max(1, 16 // group_in_channels)))


def block_diagonal_kernel(kernel, groups):
    """Dense ``(kh, kw, groups*gi, co)`` kernel equivalent to a grouped kernel
    ``(kh, kw, gi, co)`` (off-diagonal blocks are exact zeros)."""
    if groups == 1:
        return kernel
    gi, co = kernel.shape[2], kernel.shape[3]
    go = co // groups
    mask = np.kron(np.eye(groups), np.ones((gi, go)))
    return tf.tile(kernel, [1, 1, groups, 1]) * tf.constant(mask, kernel.dtype)


def chunk_kernels(kernel, groups, chunk):
    """The block-diagonal kernels of consecutive chunks of `chunk` groups, built in a few graph ops.

    ``kernel`` is a grouped kernel ``(kh, kw, gi, groups*go)``. For the
    ``groups // chunk`` whole chunks one broadcast multiply by a 0/1 mask
    builds every block-diagonal ``(kh, kw, chunk*gi, chunk*go)`` kernel at
    once (one op and its gradient per layer, not per chunk, which keeps the
    training graph small and quick to trace); a remainder chunk gets its own.
    """
    kh, kw, gi, co = kernel.shape
    go = co // groups
    n, rest = divmod(groups, chunk)
    whole, tail = (kernel, None) if not rest else tf.split(kernel, [n * chunk * go, rest * go], axis=-1)
    k = tf.reshape(whole, (kh, kw, 1, gi, n, chunk, go))
    mask = np.eye(chunk, dtype=kernel.dtype.as_numpy_dtype).reshape(1, 1, chunk, 1, 1, chunk, 1)
    blocks = tf.reshape(k * mask, (kh, kw, chunk * gi, n * chunk * go))
    kernels = tf.split(blocks, n, axis=-1) if n > 1 else [blocks]
    return kernels + ([block_diagonal_kernel(tail, rest)] if rest else [])


def _diagonal_blocks(kernels, groups, chunk, gi, go):
    """Inverse of `chunk_kernels`: the grouped kernel's gradient from the chunks' dense kernel gradients."""
    n, rest = divmod(groups, chunk)
    kh, kw = kernels[0].shape[:2]
    parts = []
    if n:
        dense = tf.concat(kernels[:n], axis=-1) if n > 1 else kernels[0]
        dense = tf.reshape(dense, (kh, kw, chunk, gi, n, chunk, go))
        mask = np.eye(chunk, dtype=dense.dtype.as_numpy_dtype).reshape(1, 1, chunk, 1, 1, chunk, 1)
        parts.append(tf.reshape(tf.reduce_sum(dense * mask, axis=2), (kh, kw, gi, n * chunk * go)))
    if rest:
        dense = tf.reshape(kernels[n], (kh, kw, rest, gi, rest, go))
        mask = np.eye(rest, dtype=dense.dtype.as_numpy_dtype).reshape(1, 1, rest, 1, rest, 1)
        parts.append(tf.reshape(tf.reduce_sum(dense * mask, axis=2), (kh, kw, gi, rest * go)))
    return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]


def _chunked_conv2d(x, kernel, strides, groups, chunk, padding):
    """Grouped conv as dense convs over chunks of `chunk` groups, with a hand-written gradient.

    The gradient is what autodiff would compute (each chunk's
    Conv2DBackpropInput / Conv2DBackpropFilter, the kernel gradient read off
    the diagonal blocks) without autodiff's per-chunk shape ops, so a
    training graph has about half the ops and traces twice as fast.
    """
    gi, co = kernel.shape[2], kernel.shape[3]
    go = co // groups
    sizes = [chunk] * (groups // chunk) + ([groups % chunk] if groups % chunk else [])
    conv_strides = [1, strides, strides, 1]

    @tf.custom_gradient
    def conv(x, kernel):
        xs = tf.split(x, [n * gi for n in sizes], axis=-1)
        kernels = chunk_kernels(kernel, groups, chunk)
        y = tf.concat([tf.nn.conv2d(xi, ki, strides, padding) for xi, ki in zip(xs, kernels)], axis=-1)

        def grad(dy):
            dys = tf.split(dy, [n * go for n in sizes], axis=-1)
            input_sizes, filter_sizes = {}, {}  # shape tensors, one per distinct chunk shape
            dxs, dks = [], []
            for xi, ki, dyi in zip(xs, kernels, dys):
                width = xi.shape[-1]
                if width not in input_sizes:
                    input_sizes[width] = (tf.constant(xi.shape.as_list(), tf.int32)
                                          if xi.shape.is_fully_defined() else tf.shape(xi))
                    filter_sizes[width] = tf.constant(ki.shape.as_list(), tf.int32)
                dxs.append(tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=input_sizes[width], filter=ki, out_backprop=dyi,
                    strides=conv_strides, padding=padding))
                dks.append(tf.raw_ops.Conv2DBackpropFilter(
                    input=xi, filter_sizes=filter_sizes[width], out_backprop=dyi,
                    strides=conv_strides, padding=padding))
            return tf.concat(dxs, axis=-1), _diagonal_blocks(dks, groups, chunk, gi, go)

        return y, grad

    return conv(x, kernel)


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
    if c >= groups:
        return tf.nn.conv2d(x, block_diagonal_kernel(kernel, groups), strides, padding)
    return _chunked_conv2d(x, kernel, strides, groups, c, padding)


@keras.saving.register_keras_serializable(package="workbench")
class GroupConv2D(keras.layers.Layer):
    """Drop-in for ``keras.layers.Conv2D(filters, kernel_size, strides,
    padding, groups=groups)`` (padding "same" or "valid") (channels_last, TensorFlow backend) with a
    fast exact CPU path. The ``kernel`` variable has the same shape as Conv2D's.

    ``implementation``: ``"auto"`` (the native grouped op where it trains:
    a GPU/TPU, or CPU kernels with a grouped gradient; else ``"chunked"``; always
    ``"chunked"`` inside `portable_graphs`), ``"native"`` or ``"chunked"``. ``groups_per_conv``
    sets the chunk size of the chunked path (default: about 16 input channels per chunk).
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
        form = getattr(_TRACED, "form", None)
        if form:
            return form == "native"
        return accelerator_present() or cpu_grouped_conv_gradients(self.compute_dtype)

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
class PointwiseConv2D(keras.layers.Conv2D):
    """A 1x1 ``Conv2D`` (same weights) that on a 1x1 input, as in squeeze-and-excitation, is one matmul:
    forward and backward 2-4x faster than oneDNN's convolution on a CPU, whose per-call cost dominates
    such small convolutions (docs/speed.md, "Precision"). Exports trace the convolution."""

    def convolution_op(self, inputs, kernel):
        if tuple(inputs.shape[1:3]) != (1, 1) or tuple(self.kernel_size) != (1, 1) or self.groups != 1 \
                or self.data_format != "channels_last" or portable_tracing():
            return super().convolution_op(inputs, kernel)
        y = tf.matmul(tf.reshape(inputs, [-1, inputs.shape[-1]]), tf.reshape(kernel, [-1, self.filters]))
        return tf.reshape(y, [-1, 1, 1, self.filters])


@contextlib.contextmanager
def traced_grouped_convs(form: str):
    """Inside, every ``GroupConv2D`` on "auto" traces `form`: "chunked" or "native" (one grouped op)."""
    previous = getattr(_TRACED, "form", None)
    _TRACED.form = form
    try:
        yield
    finally:
        _TRACED.form = previous


def portable_graphs():
    """Inside, every ``GroupConv2D`` on "auto" traces the chunked form: graphs (SavedModel, Hub, TFLite)
    that any TensorFlow build runs, including CPU builds whose grouped ``Conv2D`` has no kernel."""
    return traced_grouped_convs("chunked")


def portable_tracing() -> bool:
    """True inside `portable_graphs`: layers trace their plainest ops."""
    return getattr(_TRACED, "form", None) == "chunked"


def set_grouped_conv_implementation(model, implementation: str):
    """Set every GroupConv2D of `model` to "auto", "native" (e.g. under XLA) or "chunked"."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, GroupConv2D):
            layer.implementation = implementation
