"""BatchNormalization by TF's fused kernel, fast in bf16 at any width on a CPU.

``BatchNorm`` is ``keras.layers.BatchNormalization`` (same weights, semantics
and moving-statistics update: biased batch variance, as Keras) computed by
TF's fused op and its gradient on 4-D inputs: one pass over the data where
Keras' generic path makes several (about a fifth of a RegNetY-200MF training
step on CPU). Other ranks, masks and renorm use Keras' path.

Half precision on a CPU (docs/speed.md, "Precision"). oneDNN's bf16 fused
kernels are fast (about half float32's time) only for a multiple of 16
channels, and 2-9x slower than float32 otherwise; fp16 has no oneDNN kernel.
So for bf16 off a multiple of 16 (RegNetY-200MF's widths 24, 56 and 152) the
tensor is normalized on a *view* with k times the channels (k = 16 /
gcd(C, 16), a free reshape of NHWC: k consecutive pixels side by side), where
the fast kernels run: in training the view's per-part statistics are combined
into the channel's (exactly: means averaged, variances by the parallel rule),
the view is normalized with them, and the gradient is the inference-mode
kernel's plus the batch-statistics terms (one more fast pass); in inference the
moving statistics are tiled. Where the view does not divide (an odd number of
pixels) and for fp16, the float32 detour: input cast up, the fused op in
float32, output cast back. Variables and statistics stay float32; on a GPU or
TPU the fused op runs in the compute dtype as it is.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from workbench.utils.runtime import accelerator_present


@keras.saving.register_keras_serializable(package="workbench")
class BatchNorm(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TF's fused kernel on 4-D inputs (module docstring)."""

    def half_path(self, channels) -> str:
        """How this layer normalizes its compute dtype: "fused" (TF's op as it is), "view" or "float32"."""
        if self.compute_dtype == "float32" or accelerator_present():
            return "fused"
        if self.compute_dtype != "bfloat16":
            return "float32"
        return "fused" if channels % 16 == 0 else "view"

    def call(self, inputs, training=None, mask=None):
        if len(inputs.shape) != 4 or mask is not None or self.renorm or self.axis not in (-1, 3) \
                or not (self.scale and self.center) or self.compute_dtype == "float64":
            return super().call(inputs, training=training, mask=mask)
        # The variables themselves (not Keras' wrappers): a handful of graph ops per layer, not ~35.
        gamma, beta = self.gamma.value, self.beta.value
        moving_mean, moving_variance = self.moving_mean.value, self.moving_variance.value
        x = tf.cast(inputs, self.compute_dtype)
        path = self.half_path(x.shape[-1])
        if not (bool(training) and self.trainable):
            if path == "fused":
                return _fused(x, gamma, beta, self.epsilon, moving_mean, moving_variance)[0]
            return _on_view_or_float32(x, lambda k: _inference_on_view(x, gamma, beta, moving_mean, moving_variance,
                                                                       self.epsilon, k),
                                       lambda: _float32(x, gamma, beta, self.epsilon, moving_mean, moving_variance)[0],
                                       path)
        if path == "fused":
            y, mean, variance = _fused(x, gamma, beta, self.epsilon)
        else:
            y, mean, variance = _on_view_or_float32(x, lambda k: _training_on_view(x, gamma, beta, self.epsilon, k),
                                                    lambda: _float32(x, gamma, beta, self.epsilon), path)
        # The op returns the unbiased batch variance; Keras' moving average uses the biased one.
        n = x.shape[0] * x.shape[1] * x.shape[2] if None not in x.shape[:3] else \
            tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
        biased = (n - 1) / n if isinstance(n, int) else tf.maximum(n - 1.0, 1.0) / n
        rate = 1.0 - self.momentum
        moving_mean.assign_sub((moving_mean - mean) * rate, read_value=False)
        moving_variance.assign_sub((moving_variance - variance * biased) * rate, read_value=False)
        return y


def _fused(x, gamma, beta, epsilon, mean=None, variance=None):
    """TF's fused op: (y, batch mean, unbiased batch variance) in training, y first in inference."""
    return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean=mean, variance=variance, epsilon=epsilon,
                                            is_training=mean is None)


def _float32(x, gamma, beta, epsilon, mean=None, variance=None):
    """The fused op in float32 on `x` cast up, y cast back."""
    y, *stats = _fused(tf.cast(x, tf.float32), gamma, beta, epsilon, mean, variance)
    return (tf.cast(y, x.dtype), *stats)


def view_parts(channels: int) -> int:
    """k: how many pixels the view puts side by side to reach a multiple of 16 channels."""
    return 16 // math.gcd(int(channels), 16)


def _view_divides(x, k):
    """True / False where the pixels of `x` are known (when traced) to divide into groups of k, else None."""
    if None not in x.shape[:3]:
        return x.shape[0] * x.shape[1] * x.shape[2] % k == 0
    if None not in x.shape[1:3] and x.shape[1] * x.shape[2] % k == 0:
        return True
    return None


def _on_view_or_float32(x, on_view, float32, path):
    """`on_view(k)` where the pixels of `x` divide into groups of k (decided when traced, else when run)."""
    if path == "float32":
        return float32()
    k = view_parts(x.shape[-1])
    divides = _view_divides(x, k)
    if divides is not None:
        return on_view(k) if divides else float32()
    return tf.cond(tf.equal(tf.size(x, out_type=tf.int64) // x.shape[-1] % k, 0), lambda: on_view(k), float32)


def _view(x, k):
    return tf.reshape(x, [-1, 1, 1, k * x.shape[-1]])


def _tiled(k, *vectors):
    return [tf.tile(v, [k]) for v in vectors]


def channel_affine(x, scale, shift):
    """`x * scale + shift` along the last axis of a 4-D `x` in one pass of the fused op's inference kernel on
    a view with a multiple of 16 channels (where Mul and Add make two slower passes; for RGB 5-8x faster);
    None where the view is not known (when traced) to divide the pixels or `x` is not float32 or bf16."""
    k = view_parts(x.shape[-1])
    if x.dtype not in (tf.float32, tf.bfloat16) or not _view_divides(x, k):
        return None
    epsilon = 1e-3
    ones = tf.ones([x.shape[-1]])
    return _inference_on_view(x, tf.constant(scale, tf.float32), tf.constant(shift, tf.float32), 0 * ones,
                              ones - epsilon, epsilon, k)


def _inference_on_view(x, gamma, beta, mean, variance, epsilon, k):
    y = _fused(_view(x, k), *_tiled(k, gamma, beta), epsilon, *_tiled(k, mean, variance))[0]
    return tf.reshape(y, tf.shape(x))


def _training_on_view(x, gamma, beta, epsilon, k):
    """(y, batch mean, unbiased batch variance) of `x` normalized by its batch statistics, on a k-times view."""
    channels = x.shape[-1]
    n = tf.cast(tf.size(x, out_type=tf.int64) // channels, tf.float32)  # values per channel

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        view = _view(x, k)
        # Statistics of each of the k parts of a channel, combined: mean of means, and the mean of the
        # parts' biased variances plus the variance of their means.
        _, part_mean, part_variance = _fused(view, *_tiled(k, tf.ones_like(gamma), tf.zeros_like(beta)), epsilon)
        part_mean = tf.reshape(part_mean, [k, channels])
        part_variance = tf.reshape(part_variance, [k, channels]) * (n / k - 1) / (n / k)
        mean = tf.reduce_mean(part_mean, 0)
        variance = tf.reduce_mean(part_variance, 0) + tf.reduce_mean(tf.square(part_mean - mean), 0)
        tiled = _tiled(k, gamma, mean, variance)
        y = _fused(view, tiled[0], *_tiled(k, beta), epsilon, *tiled[1:])[0]

        def grad(dy, _dmean, _dvariance):
            # dx = s (dy - mean(dy) - xhat mean(dy xhat)), s = gamma / sqrt(var + eps): the inference-mode
            # kernel gives s dy and the sums of dy and dy xhat; the rest is an affine map of xhat per channel.
            dx, part_dgamma, part_dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=_view(dy, k), x=view, scale=tiled[0], reserve_space_1=tiled[1], reserve_space_2=tiled[2],
                reserve_space_3=tf.zeros([0]), epsilon=epsilon, data_format="NHWC", is_training=False)
            dgamma = tf.reduce_sum(tf.reshape(part_dgamma, [k, channels]), 0)
            dbeta = tf.reduce_sum(tf.reshape(part_dbeta, [k, channels]), 0)
            s = gamma * tf.math.rsqrt(variance + epsilon)
            correction = _fused(view, *_tiled(k, -s * dgamma / n, -s * dbeta / n), epsilon, *tiled[1:])[0]
            return tf.reshape(dx + correction, tf.shape(x)), dgamma, dbeta

        return (tf.reshape(y, tf.shape(x)), mean, variance * n / tf.maximum(n - 1, 1)), grad

    return normalize(x, gamma, beta)
