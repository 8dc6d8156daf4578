"""The RegNet model in Keras 3: stem, four stages of X, Y or Z blocks, head.

A functional `keras.Model` whose layers are named `<stage>_...` as the
model contract (`workbench.models.contract`) says, so `stage_layers(model, "stage3")`
finds a stage by name. Images go in as raw 0-255 RGB; normalization is the
model's first layer. Initialization is seeded: the same `seed` builds the same
weights, whatever the global random state.
"""
from __future__ import annotations

import zlib

import keras

from workbench.utils import checks
from workbench.models.contract import CLASSIFIER, DROPOUT, FEATURES
from workbench.models.design import RegNetConfig, RegNetZConfig, get_config
from workbench.models.batchnorm import BatchNorm, channel_affine
from workbench.models.layers import GroupConv2D, PointwiseConv2D, portable_tracing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# How a set of weights was trained: input normalization and stride-2 padding.
# keras.applications: x / 255 and TF "same" padding (asymmetric on even sizes);
# pycls / timm: ImageNet mean/std and symmetric padding of 1, as in PyTorch; "half": mean and std 0.5
# with PyTorch's padding (timm's RegNetZ B/C/D/E).
CONVENTIONS = {
    "keras": dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), symmetric_padding=False),
    "torch": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, symmetric_padding=True),
    "half": dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), symmetric_padding=True),
}


@keras.saving.register_keras_serializable(package="workbench")
class Preprocess(keras.layers.Layer):
    """Raw 0-255 RGB to the normalized input the weights were trained on."""

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        scale = [1.0 / (255.0 * s) for s in self.std]
        if not portable_tracing():  # one fused pass instead of two (exports keep the plain arithmetic)
            y = channel_affine(x, scale, [-m / s for m, s in zip(self.mean, self.std)])
            if y is not None:
                return y
        mean = keras.ops.convert_to_tensor([255.0 * m for m in self.mean], self.compute_dtype)
        return (x - mean) * keras.ops.convert_to_tensor(scale, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="workbench")
class DropPath(keras.layers.Layer):
    """Stochastic depth: in training, zero a sample's residual branch with probability `rate` (and scale
    the kept ones by 1/(1-rate)); identity in inference and export. Seeded like the other layers."""

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = float(rate), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate <= 0:
            return x
        keep = 1.0 - self.rate
        shape = (keras.ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = keras.ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x * mask / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _bn(name):
    return BatchNorm(momentum=0.9, epsilon=1e-5, name=name)


def layer_seed(seed: int, name: str) -> int:
    """A reproducible seed for one layer's initializer: the model seed and the layer name."""
    return zlib.crc32(f"{seed}/{name}".encode()) & 0x7FFFFFFF


def _he(seed, name):
    """pycls initialization, He normal over fan-out, seeded per layer."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal",
                                              seed=layer_seed(seed, name))


def _conv3x3(x, filters, stride, groups, symmetric, seed, name):
    """3x3 convolution; stride 2 pads like PyTorch when `symmetric`."""
    padding = "same"
    if stride == 2 and symmetric:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    if groups == 1:
        return keras.layers.Conv2D(filters, 3, strides=stride, padding=padding, use_bias=False,
                                   kernel_initializer=_he(seed, name), name=name)(x)
    return GroupConv2D(filters, 3, strides=stride, groups=groups, padding=padding,
                       kernel_initializer=_he(seed, name), name=name)(x)


def _conv1x1(x, filters, seed, name, stride=1, layer=keras.layers.Conv2D, **kwargs):
    return layer(filters, 1, strides=stride, kernel_initializer=_he(seed, name), name=name,
                 **{"use_bias": False, **kwargs})(x)


def _se(y, w_se, w_b, act, seed, name):
    """Squeeze-and-excitation on `y` (w_b channels) through w_se channels."""
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(y)
    s = _conv1x1(s, w_se, seed, f"{name}_se_reduce", layer=PointwiseConv2D, activation=act, use_bias=True)
    s = _conv1x1(s, w_b, seed, f"{name}_se_expand", layer=PointwiseConv2D, activation="sigmoid", use_bias=True)
    return keras.layers.Multiply(name=f"{name}_se_scale")([y, s])


def _drop_path(y, rate, seed, name):
    if not rate:
        return y
    return DropPath(rate, seed=layer_seed(seed, f"{name}_drop_path"), name=f"{name}_drop_path")(y)


def _block(x, w_in, w_out, stride, group_width, bottleneck_ratio, se_ratio, symmetric, seed, name,
           drop_path=0.0):
    """Residual bottleneck block: X block, or Y block when se_ratio > 0; `drop_path`: stochastic depth rate."""
    w_b = int(round(w_out * bottleneck_ratio))
    shortcut = x
    if stride != 1 or w_in != w_out:
        shortcut = _bn(f"{name}_proj_bn")(_conv1x1(x, w_out, seed, f"{name}_proj_conv", stride))
    y = _conv1x1(x, w_b, seed, f"{name}_conv1")
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1")(y))
    y = _conv3x3(y, w_b, stride, w_b // group_width, symmetric, seed, f"{name}_conv2")
    y = keras.layers.ReLU(name=f"{name}_relu2")(_bn(f"{name}_bn2")(y))
    if se_ratio:
        y = _se(y, int(round(w_in * se_ratio)), w_b, "relu", seed, name)
    y = _conv1x1(y, w_out, seed, f"{name}_conv3")
    y = _drop_path(_bn(f"{name}_bn3")(y), drop_path, seed, name)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _silu(x, name):
    return keras.layers.Activation("silu", name=name)(x)


def _z_block(x, b, symmetric, seed, drop_path=0.0):
    """Z block (see `RegNetZConfig`): expand, grouped 3x3, SE, project; linear output, shortcut if shapes match."""
    name = b["name"]
    y = _silu(_bn(f"{name}_bn1")(_conv1x1(x, b["w_mid"], seed, f"{name}_conv1")), f"{name}_act1")
    y = _conv3x3(y, b["w_mid"], b["stride"], b["groups"], symmetric, seed, f"{name}_conv2")
    y = _silu(_bn(f"{name}_bn2")(y), f"{name}_act2")
    y = _se(y, b["w_se"], b["w_mid"], b["se_act"], seed, name)
    y = _bn(f"{name}_bn3")(_conv1x1(y, b["w_out"], seed, f"{name}_conv3"))
    if b["stride"] != 1 or b["w_in"] != b["w_out"]:
        # No shortcut where the shape changes (timm's downsample=''), and so no stochastic depth: as
        # timm's RegNet class; its ByobNet would drop the block's whole output there.
        return y
    return keras.layers.Add(name=f"{name}_add")([_drop_path(y, drop_path, seed, name), x])


def _drop_rates(total, rate):
    """timm's stochastic-depth rule: block i of n drops with rate * i / (n - 1)."""
    return [rate * i / max(total - 1, 1) for i in range(total)]


def _xy_body(x, config, symmetric, seed, drop_path_rate):
    """Stem and four stages of X or Y blocks."""
    x = _conv3x3(x, 32, 2, 1, symmetric, seed, "stem_conv")
    x = keras.layers.ReLU(name="stem_relu")(_bn("stem_bn")(x))
    w_in, stages = 32, config.stages()
    rates = iter(_drop_rates(sum(st["depth"] for st in stages), drop_path_rate))
    for s, st in enumerate(stages, start=1):
        for b in range(st["depth"]):
            x = _block(x, w_in, st["width"], 2 if b == 0 else 1, st["group_width"],
                       st["bottleneck_ratio"], config.se_ratio, symmetric, seed,
                       f"stage{s}_block{b + 1}", drop_path=next(rates))
            w_in = st["width"]
    return x


def _z_body(x, config, symmetric, seed, drop_path_rate):
    """Stem ("3x3" or "tiered"), four stages of Z blocks and the final 1x1 conv (in stage 4, as timm's features)."""
    convs = config.stem_convs()
    for i, (w, stride) in enumerate(convs):
        suffix = str(i + 1) if len(convs) > 1 else ""
        x = _conv3x3(x, w, stride, 1, symmetric, seed, f"stem_conv{suffix}")
        x = _silu(_bn(f"stem_bn{suffix}")(x), f"stem_act{suffix}")
    blocks = config.blocks()
    for b, rate in zip(blocks, _drop_rates(len(blocks), drop_path_rate)):
        x = _z_block(x, b, symmetric, seed, drop_path=rate)
    if config.num_features:
        x = _bn("stage4_final_bn")(_conv1x1(x, config.num_features, seed, "stage4_final_conv"))
    return _silu(x, "stage4_final_act")


def _check_input_shape(input_shape):
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3) for RGB images, got {input_shape}.")
    for side in shape[:2]:
        if side is not None and (not isinstance(side, int) or side < checks.MIN_IMAGE_SIZE):
            raise ValueError(
                f"input_shape {input_shape} is too small: RegNet downsamples 32x, so height and "
                f"width must be at least {checks.MIN_IMAGE_SIZE} pixels (or None for any size).")
    return shape


def classifier_head(x, num_classes, classifier_activation="softmax", dropout=0.0, seed=0):
    """Pooled features -> [dropout] -> the Dense classifier, named as the model contract says."""
    if dropout:
        x = keras.layers.Dropout(dropout, seed=layer_seed(seed, DROPOUT), name=DROPOUT)(x)
    init = keras.initializers.GlorotUniform(seed=layer_seed(seed, CLASSIFIER))
    return keras.layers.Dense(num_classes, activation=classifier_activation, kernel_initializer=init,
                              name=CLASSIFIER)(x)


def build(config: RegNetConfig | RegNetZConfig, num_classes=1000, input_shape=(224, 224, 3), include_top=True,
          pooling=None, classifier_activation="softmax", dropout=0.0, convention="keras", name=None,
          seed=0, drop_path_rate=0.0):
    """The Keras model for one point of the design space, randomly initialized from `seed`.

    drop_path_rate: stochastic depth as timm's RegNet: block i of n drops its residual branch with
    probability drop_path_rate * i / (n - 1), 0 for the first block (no layer at all when 0).
    """
    shape = _check_input_shape(input_shape)
    checks.fraction("drop_path_rate", drop_path_rate, " (stochastic depth, e.g. 0.05)")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}.")
    conv = CONVENTIONS[convention]
    inputs = keras.Input(shape, name="image")
    x = Preprocess(conv["mean"], conv["std"], name="stem_preprocess")(inputs)
    body = _z_body if isinstance(config, RegNetZConfig) else _xy_body
    x = body(x, config, conv["symmetric_padding"], seed, drop_path_rate)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name=FEATURES)(x)
        x = classifier_head(x, num_classes, classifier_activation, dropout, seed)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name=FEATURES)(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name=FEATURES)(x)
    return keras.Model(inputs, x, name=name or config.name)


def regnet(variant="regnety_200mf", num_classes=1000, weights=None, input_shape=(224, 224, 3),
           include_top=True, pooling=None, classifier_activation="softmax", dropout=0.0, name=None,
           seed=0, drop_path_rate=0.0):
    """A RegNet `keras.Model` for a named variant or a `RegNetConfig`.

    weights: None (random init); a tag: "imagenet" (the most accurate
    ImageNet-1k weights under a commercial-use license), "pycls" (the paper's),
    "keras" (keras.applications), any tag of `wb.list_weights(variant)` ("tv2",
    "ra3", "swag_ft_in1k", ...) or a Hub id ("timm/regnety_160.swag_ft_in1k"),
    downloaded once into the Hugging Face cache; or a file: keras.applications
    `.h5`, timm / pycls state dict (`.safetensors`, `.pth`, `.pyth`) or Keras 3
    `.weights.h5`. The file's head is kept when it fits (same number of
    classes), else a fresh head is built: with num_classes != 1000 the ImageNet
    head is dropped.
    seed: the random initialization (of every layer, or of the fresh head and
    dropout), independent of the global random state.
    drop_path_rate: stochastic depth per block, rising linearly to this rate in
    the last block (timm's rule); off in inference and in every export.
    """
    from workbench.models import convert

    config = get_config(variant)
    _check_input_shape(input_shape)
    source = convert.open_weights(weights, config, include_top, num_classes)
    convention = config.convention if isinstance(config, RegNetZConfig) else (
        source.convention if source else "keras")
    model = build(config, num_classes, input_shape, include_top, pooling, classifier_activation,
                  dropout, convention=convention, name=name, seed=seed, drop_path_rate=drop_path_rate)
    if source:
        source.assign(model)
    return model
