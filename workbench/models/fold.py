"""BatchNorm folded into the convolution before it, for inference.

In inference a BatchNorm after a bias-free convolution is an affine map per
output channel, so it can live in the convolution: kernel times
gamma / sqrt(var + eps) per output channel, and a bias beta - mean * that.
Grappler does this by itself in float32, but not in bfloat16: there oneDNN
ran the convolutions and the BatchNorms as separate ops (26 of RegNetY-200MF's
70 convolutions fused, docs/speed.md "Precision"). `fold_batchnorm` hands back
a model whose convolutions carry their BatchNorm, which runs fused in any
precision; its outputs equal the original's up to float rounding.
"""
from __future__ import annotations

import keras
import numpy as np

from workbench.models.layers import GroupConv2D

CONVS = (keras.layers.Conv2D, GroupConv2D)


@keras.saving.register_keras_serializable(package="workbench")
class FoldedBatchNorm(keras.layers.Layer):
    """Where a BatchNorm was before its statistics went into the convolution: passes its input on."""

    def call(self, inputs, training=None, mask=None):
        return inputs


def foldable_pairs(model: keras.Model) -> dict[str, str]:
    """{BatchNormalization name: name of the bias-free convolution it alone follows} in `model`."""
    consumers: dict[str, int] = {}
    producer = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                source = tensor._keras_history.operation
                consumers[source.name] = consumers.get(source.name, 0) + 1
                producer.setdefault(layer.name, source)
    return {layer.name: producer[layer.name].name for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization) and len(layer._inbound_nodes) == 1
            and isinstance(producer.get(layer.name), CONVS) and not producer[layer.name].use_bias
            and consumers[producer[layer.name].name] == 1}


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of `model` for inference with every foldable BatchNorm inside its convolution (a
    `FoldedBatchNorm` left in its place, under its name). The model itself is not changed."""
    pairs = foldable_pairs(model)
    convs = set(pairs.values())

    def clone(layer):
        if layer.name in pairs:
            return FoldedBatchNorm(name=layer.name)
        config = layer.get_config()
        if layer.name in convs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in convs:
            continue
        if layer.name in pairs:
            folded.get_layer(pairs[layer.name]).set_weights(
                _folded(model.get_layer(pairs[layer.name]).kernel, layer))
        elif layer.weights:
            folded.get_layer(layer.name).set_weights(layer.get_weights())
    return folded


def _folded(kernel, bn) -> list[np.ndarray]:
    """[kernel, bias] of a convolution with `bn` folded in (scale per output channel, the kernel's last axis)."""
    mean, var = (np.asarray(bn.moving_mean), np.asarray(bn.moving_variance))
    gamma = np.asarray(bn.gamma) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.epsilon)
    return [np.asarray(kernel) * scale, beta - mean * scale]
