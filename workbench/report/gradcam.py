"""Grad-CAM: where a classifier looked (Selvaraju et al. 2017), and the heatmap drawn over an image.

`explain(model, images)` weighs each channel of the last stage's feature map (the input of the
pooled-feature layer: stage4's output in `wb.regnet` models) by the mean gradient of a class score,
keeps the positive sum and upsamples it to the image. The class score is the classifier's logit
(before its softmax), for the predicted class unless `class_index` says otherwise. A batch of images
costs one forward and one backward pass under one gradient tape.
"""
from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from workbench.models.contract import CLASSIFIER, FEATURES, classifier
from workbench.models.tfhub import HubBackbone
from workbench.utils.figures import plt

__all__ = ["GradCAMUnavailableError", "explain", "overlay_heatmap", "report_heatmaps"]


class GradCAMUnavailableError(ValueError):
    """The model has no spatial feature map with class scores after it, so Grad-CAM cannot be computed."""


def _hub_layer(model):
    return next((layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, HubBackbone)),
                None)


def _feature_map(model: keras.Model, layer=None):
    """The 4-D tensor Grad-CAM differentiates: `layer`'s output, else the pooled-feature layer's input."""
    if layer is not None:
        tensor = model.get_layer(layer).output
    else:
        try:
            tensor = model.get_layer(FEATURES).input
        except ValueError:
            raise GradCAMUnavailableError(
                f"Model '{model.name}' has no pooled-feature layer {FEATURES!r} after its last stage: build it "
                f"with wb.regnet(..., include_top=True), or pass layer= the name of a layer with a "
                f"(batch, height, width, channels) output.") from None
    if len(tensor.shape) == 4:
        return tensor
    hub = _hub_layer(model)
    if hub is not None and layer is None:
        raise GradCAMUnavailableError(
            f"Grad-CAM needs the feature map before pooling, and the TF Hub backbone {hub.handle!r} returns "
            f"pooled features only (shape {tuple(tensor.shape)}): its SavedModel does not expose the spatial "
            f"map. Fine-tune a wb.regnet model to see where it looks.")
    raise GradCAMUnavailableError(f"Grad-CAM needs a (batch, height, width, channels) feature map; "
                                  f"{'layer ' + repr(layer) if layer else 'the last stage'} outputs "
                                  f"shape {tuple(tensor.shape)}.")


def _scorer(model: keras.Model, feature_map):
    """images -> (feature map, the classifier's logits), the logits computed from its Dense layer's input."""
    head = classifier(model)
    if not isinstance(head, keras.layers.Dense):
        raise GradCAMUnavailableError(f"Model '{model.name}' has no Dense classifier {CLASSIFIER!r}: Grad-CAM "
                                      f"explains a class score (build the model with include_top=True).")
    inner = keras.Model(model.inputs, [feature_map, head.input])

    def scores(x):
        fmap, pooled = inner(x, training=False)
        return fmap, tf.matmul(tf.cast(pooled, tf.float32), tf.cast(head.kernel, tf.float32)) + head.bias
    return scores


def _cams(scores, x, class_index):
    """(N, h, w) Grad-CAM maps of one batch, before upsampling."""
    with tf.GradientTape() as tape:
        fmap, logits = scores(x)
        chosen = tf.argmax(logits, axis=-1, output_type=tf.int32) if class_index is None else class_index
        target = tf.gather(logits, chosen, axis=1, batch_dims=1)
    # Each image's score depends on its own feature map only (inference mode), so one gradient of the
    # batch's sum gives every image's gradient.
    grads = tf.cast(tape.gradient(target, fmap), tf.float32)  # a mixed-precision map: its own dtype
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * tf.cast(fmap, tf.float32), axis=-1))


def explain(model: keras.Model, images, class_index=None, layer=None, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] at the images' size, for the predicted class by default.

    images: (N, H, W, 3) or one (H, W, 3) image, raw 0-255 as the model takes them.
    class_index: None (each image's predicted class), an int, or one class per image.
    layer: the name of the layer whose 4-D output is explained (default: the last stage's output).
    A heatmap is 0 everywhere when no part of the feature map raises the class score.
    """
    x = np.asarray(images, dtype="float32")
    single = x.ndim == 3
    x = x[None] if single else x
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W, channels) or one (H, W, channels) image, got shape {x.shape}.")
    classes = None if class_index is None else np.broadcast_to(np.asarray(class_index, "int32"), (len(x),))
    scores = _scorer(model, _feature_map(model, layer))
    out = []
    for start in range(0, len(x), batch_size):
        chunk = slice(start, start + batch_size)
        cams = _cams(scores, tf.constant(x[chunk]), None if classes is None else tf.constant(classes[chunk]))
        cams = tf.image.resize(cams[..., None], x.shape[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
        out.append(tf.math.divide_no_nan(cams, peak).numpy())
    heatmaps = np.clip(np.concatenate(out), 0.0, 1.0) if out else np.zeros((0, *x.shape[1:3]), "float32")
    return heatmaps[0] if single else heatmaps


def overlay_heatmap(image, heatmap, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """`image` (H, W, 3, 0-255) with `heatmap` ([0, 1], any size, resized to the image) blended on top: uint8."""
    image = np.clip(np.asarray(image, dtype="float32"), 0, 255)
    heatmap = np.asarray(heatmap, dtype="float32")
    if heatmap.shape != image.shape[:2]:
        heatmap = tf.image.resize(heatmap[..., None], image.shape[:2], method="bilinear")[..., 0].numpy()
    colors = plt.get_cmap(cmap)(np.clip(heatmap, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * image[..., :3] + alpha * colors, 0, 255).astype("uint8")


def report_heatmaps(model, images) -> tuple[np.ndarray | None, str]:
    """(heatmaps, "") of `images` for a report's picture, or (None, a short note) when `model` is None or
    has no feature map to explain (the reason is then given as a warning)."""
    if model is None or not len(images):
        return None, ""
    try:
        return explain(model, np.stack(images)), ""
    except GradCAMUnavailableError as err:
        warnings.warn(f"No Grad-CAM in the report: {err}", stacklevel=2)
        return None, "no Grad-CAM for this model"
