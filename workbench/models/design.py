"""The RegNet design space: quantized linear widths, named models, complexity.

Pure Python, no framework: `generate_regnet` turns the paper's parameters
(w0, wa, wm, depth, group width) into per-stage widths and depths, named
models are rows of parameters, and `complexity` counts multiply-adds and
parameters the way pycls does, so "600MF" is computed, not quoted.
RegNetZ (`RegNetZConfig`) lists its stages explicitly, as timm defines it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re

SIZES = ("200mf", "400mf", "600mf", "800mf", "1.6gf", "3.2gf",
         "4gf", "6.4gf", "8gf", "12gf", "16gf", "32gf")
STEM_WIDTH = 32


@dataclasses.dataclass(frozen=True)
class RegNetConfig:
    """One point of the RegNet design space (pycls parameter names)."""

    w0: int
    wa: float
    wm: float
    depth: int
    group_width: int
    se_ratio: float = 0.0
    bottleneck_ratio: float = 1.0
    quant: int = 8
    name: str = "regnet_custom"
    rounding: str = "pycls"              # "torchvision": bottleneck widths rounded as torchvision does

    @property
    def block_type(self) -> str:
        return "Y" if self.se_ratio else "X"

    def stages(self) -> list[dict]:
        """Per stage: width, depth, group width, bottleneck ratio."""
        widths, depths = generate_regnet(self.w0, self.wa, self.wm, self.depth, self.quant)
        if len(widths) != 4:
            raise ValueError(
                f"{self.name}: the parameters give {len(widths)} stages "
                f"(widths {widths}); RegNet needs exactly 4. Adjust w0/wa/wm/depth.")
        out = []
        for w, d in zip(widths, depths):
            w_b = int(round(w * self.bottleneck_ratio))
            g = min(self.group_width, w_b)
            w_b = _make_divisible(w_b, g) if self.rounding == "torchvision" else _quantize(w_b, g)
            out.append(dict(width=int(round(w_b / self.bottleneck_ratio)), depth=d,
                            group_width=g, bottleneck_ratio=self.bottleneck_ratio))
        return out


@dataclasses.dataclass(frozen=True)
class RegNetZConfig:
    """A RegNetZ ("Fast and Accurate Model Scaling", Dollár et al. 2021) as timm defines it.

    Z block: 1x1 expansion to `bottleneck_ratio` times a width, grouped 3x3, SE, 1x1 projection;
    BN and SiLU after the first two convolutions, a linear (un-activated) output, and an identity
    shortcut only where the shape is kept (the first block of each stage has none). After stage 4, a
    1x1 conv to `num_features` with BN and SiLU (a SiLU alone when 0). timm spells it two ways, both
    faithful here: ByobNet (regnetz_b16 ... e8, `bottle_in=True`: expansion of the block *input*,
    SE width a quarter of the expanded width rounded to 8, ReLU inside SE) and its RegNet class
    (regnetz_040, `bottle_in=False`: expansion of the block *output*, SE width a quarter of the block
    input, SiLU inside SE). Stem "3x3": one conv, stride 2; "tiered": three 3x3 convs (3/8, 1/2 and
    all of `stem_width`), stride 4, after which stage 1 keeps the resolution.
    """

    depths: tuple
    widths: tuple
    group_width: int
    bottleneck_ratio: float
    stem: str = "3x3"
    stem_width: int = 32
    num_features: int = 0
    bottle_in: bool = True
    se_ratio: float = 0.25
    convention: str = "half"           # workbench.models.regnet.CONVENTIONS: timm's input normalization
    name: str = "regnetz_custom"

    def __post_init__(self):
        if self.stem not in ("3x3", "tiered"):
            raise ValueError(f"{self.name}: stem must be '3x3' or 'tiered', got {self.stem!r}.")
        if len(self.depths) != 4 or len(self.widths) != 4:
            raise ValueError(f"{self.name}: RegNetZ needs 4 stages, got depths {self.depths} and "
                             f"widths {self.widths}.")

    def stem_convs(self) -> list[tuple]:
        """(width, stride) of each 3x3 conv of the stem."""
        w = self.stem_width
        return [(3 * w // 8, 2), (w // 2, 1), (w, 2)] if self.stem == "tiered" else [(w, 2)]

    def stages(self) -> list[dict]:
        """Per stage: width, depth, group width, bottleneck ratio and the stride of its first block."""
        first = 1 if self.stem == "tiered" else 2
        return [dict(width=w, depth=d, group_width=self.group_width, bottleneck_ratio=self.bottleneck_ratio,
                     stride=first if i == 0 else 2)
                for i, (w, d) in enumerate(zip(self.widths, self.depths))]

    def blocks(self) -> list[dict]:
        """Every block's input, expanded, SE and output widths, groups, stride and SE activation."""
        out, w_in = [], self.stem_width
        for s, st in enumerate(self.stages(), start=1):
            for b in range(st["depth"]):
                w_out = st["width"]
                if self.bottle_in:
                    w_mid = _make_divisible(w_in * self.bottleneck_ratio, 8)
                    w_se, se_act = max(8, int(w_mid * self.se_ratio + 4) // 8 * 8), "relu"
                else:
                    w_mid = int(round(w_out * self.bottleneck_ratio))
                    w_se, se_act = int(round(w_in * self.se_ratio)), "silu"
                out.append(dict(name=f"stage{s}_block{b + 1}", w_in=w_in, w_out=w_out, w_mid=w_mid,
                                groups=w_mid // min(self.group_width, w_mid), w_se=w_se, se_act=se_act,
                                stride=st["stride"] if b == 0 else 1))
                w_in = w_out
        return out

    @property
    def features(self) -> int:
        """Width of the pooled features: `num_features`, else the last stage's width."""
        return self.num_features or self.widths[-1]


def _quantize(f: float, q: int) -> int:
    """The closest non-zero multiple of q."""
    return max(q, int(round(f / q) * q))


def _make_divisible(v: int, d: int) -> int:
    """torchvision's rounding: the nearest multiple of d (halves up), never more than 10% below v."""
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def generate_regnet(w0: int, wa: float, wm: float, depth: int, q: int = 8):
    """Quantized linear rule of the paper: (stage widths, stage depths)."""
    if not (wa >= 0 and w0 > 0 and wm > 1 and w0 % q == 0 and depth > 0):
        raise ValueError(
            f"invalid design-space point w0={w0}, wa={wa}, wm={wm}, depth={depth}: "
            f"need wa >= 0, w0 > 0 and divisible by q={q}, wm > 1, depth > 0")
    widths = []
    for j in range(depth):
        u = w0 + wa * j                                  # continuous widths
        s = round(math.log(u / w0) / math.log(wm))       # stage index of block j
        widths.append(int(round(w0 * wm ** s / q) * q))
    stage_widths, stage_depths = [], []
    for w in widths:
        if stage_widths and stage_widths[-1] == w:
            stage_depths[-1] += 1
        else:
            stage_widths.append(w)
            stage_depths.append(1)
    return stage_widths, stage_depths


# name: (w0, wa, wm, depth, group width); pycls / timm parameter rows.
_X = {
    "200mf": (24, 36.44, 2.49, 13, 8), "400mf": (24, 24.48, 2.54, 22, 16),
    "600mf": (48, 36.97, 2.24, 16, 24), "800mf": (56, 35.73, 2.28, 16, 16),
    "1.6gf": (80, 34.01, 2.25, 18, 24), "3.2gf": (88, 26.31, 2.25, 25, 48),
    "4gf": (96, 38.65, 2.43, 23, 40), "6.4gf": (184, 60.83, 2.07, 17, 56),
    "8gf": (80, 49.56, 2.88, 23, 120), "12gf": (168, 73.36, 2.37, 19, 112),
    "16gf": (216, 55.59, 2.1, 22, 128), "32gf": (320, 69.86, 2.0, 23, 168),
}
_Y = {
    "200mf": (24, 36.44, 2.49, 13, 8), "400mf": (48, 27.89, 2.09, 16, 8),
    "600mf": (48, 32.54, 2.32, 15, 16), "800mf": (56, 38.84, 2.4, 14, 16),
    "1.6gf": (48, 20.71, 2.65, 27, 24), "3.2gf": (80, 42.63, 2.66, 21, 24),
    "4gf": (96, 31.41, 2.24, 22, 64), "6.4gf": (112, 33.22, 2.27, 25, 72),
    "8gf": (192, 76.82, 2.19, 17, 56), "12gf": (168, 73.36, 2.37, 19, 112),
    "16gf": (200, 106.23, 2.48, 18, 112), "32gf": (232, 115.89, 2.53, 20, 232),
}
CONFIGS: dict[str, "RegNetConfig | RegNetZConfig"] = {}
for _size in SIZES:
    CONFIGS[f"regnety_{_size}"] = RegNetConfig(*_Y[_size], se_ratio=0.25, name=f"regnety_{_size}")
for _size in SIZES:
    CONFIGS[f"regnetx_{_size}"] = RegNetConfig(*_X[_size], name=f"regnetx_{_size}")
# timm's torchvision-shaped variants (regnetx_004_tv, ...): the paper's parameters, torchvision's rounding.
for _name in ("regnetx_400mf", "regnety_800mf", "regnety_8gf"):
    CONFIGS[f"{_name}_tv"] = dataclasses.replace(CONFIGS[_name], rounding="torchvision", name=f"{_name}_tv")
# The SEER sizes (Goyal et al. 2021), timm's regnety_640 / regnety_1280 / regnety_2560.
_SEER = {"64gf": (352, 147.48, 2.4, 20, 328), "128gf": (456, 160.83, 2.52, 27, 264),
         "256gf": (640, 230.83, 2.53, 27, 373)}
for _size, _row in _SEER.items():
    CONFIGS[f"regnety_{_size}"] = RegNetConfig(*_row, se_ratio=0.25, name=f"regnety_{_size}")
# timm's RegNetZ with ImageNet weights (byobnet.py and regnet.py, timm 1.0.31). The EvoNorm variants
# (regnetz_*_evos) are left out: EvoNorm is a different normalization layer, not BatchNorm.
_Z_BC = dict(depths=(2, 6, 12, 2), widths=(48, 96, 192, 288), group_width=16, num_features=1536)
_Z_D = dict(depths=(3, 6, 12, 3), widths=(64, 128, 256, 384), stem="tiered", stem_width=64, num_features=1792)
_Z_040 = RegNetConfig(w0=48, wa=14.5, wm=2.226, depth=28, group_width=8, bottleneck_ratio=4.0).stages()
_Z_040 = dict(depths=tuple(st["depth"] for st in _Z_040), widths=tuple(st["width"] for st in _Z_040),
              group_width=8, bottleneck_ratio=4.0, bottle_in=False, convention="torch")
for _name, _row in {
    "regnetz_b16": dict(_Z_BC, bottleneck_ratio=3.0),
    "regnetz_c16": dict(_Z_BC, bottleneck_ratio=4.0),
    "regnetz_d8": dict(_Z_D, group_width=8, bottleneck_ratio=4.0),
    "regnetz_d32": dict(_Z_D, group_width=32, bottleneck_ratio=4.0),
    "regnetz_e8": dict(depths=(3, 8, 16, 3), widths=(96, 192, 384, 512), group_width=8, bottleneck_ratio=4.0,
                       stem="tiered", stem_width=64, num_features=2048),
    "regnetz_040": dict(_Z_040, num_features=0),
    "regnetz_040_h": dict(_Z_040, num_features=1536),
}.items():
    CONFIGS[_name] = RegNetZConfig(**_row, name=_name)
VARIANTS = tuple(CONFIGS)

# Published complexity (pycls MODEL_ZOO.md): GF (multiply-adds, 1e9) and M params.
PUBLISHED = {
    "regnetx_200mf": (0.2, 2.7), "regnetx_400mf": (0.4, 5.2), "regnetx_600mf": (0.6, 6.2),
    "regnetx_800mf": (0.8, 7.3), "regnetx_1.6gf": (1.6, 9.2), "regnetx_3.2gf": (3.2, 15.3),
    "regnetx_4gf": (4.0, 22.1), "regnetx_6.4gf": (6.5, 26.2), "regnetx_8gf": (8.0, 39.6),
    "regnetx_12gf": (12.1, 46.1), "regnetx_16gf": (15.9, 54.3), "regnetx_32gf": (31.7, 107.8),
    "regnety_200mf": (0.2, 3.2), "regnety_400mf": (0.4, 4.3), "regnety_600mf": (0.6, 6.1),
    "regnety_800mf": (0.8, 6.3), "regnety_1.6gf": (1.6, 11.2), "regnety_3.2gf": (3.2, 19.4),
    "regnety_4gf": (4.0, 20.6), "regnety_6.4gf": (6.4, 30.6), "regnety_8gf": (8.0, 39.2),
    "regnety_12gf": (12.1, 51.8), "regnety_16gf": (15.9, 83.6), "regnety_32gf": (32.3, 145.0),
    # torchvision's weights metadata (num_params, GFLOPS) for regnet_x_400mf, regnet_y_800mf,
    # regnet_y_8gf, regnet_y_128gf; the SEER sizes' names and timm's published parameter counts.
    "regnetx_400mf_tv": (0.414, 5.496), "regnety_800mf_tv": (0.834, 6.433), "regnety_8gf_tv": (8.473, 39.381),
    "regnety_64gf": (64.0, 281.38), "regnety_128gf": (127.518, 644.81), "regnety_256gf": (256.0, 1282.60),
    # RegNetZ: GMACs at the native train size (PUBLISHED_SIZE) and param_count of timm's model cards
    # (their model comparison table; regnetz_040_h's card: 4.1 GMACs, 28.9 M at 256 px).
    "regnetz_b16": (1.45, 9.72), "regnetz_c16": (2.51, 13.46), "regnetz_d8": (3.97, 23.37),
    "regnetz_d32": (5.98, 27.58), "regnetz_e8": (9.91, 57.70), "regnetz_040": (4.06, 27.12),
    "regnetz_040_h": (4.12, 28.94),
}
# The image size a PUBLISHED figure was taken at, where it is not 224.
PUBLISHED_SIZE = {name: 256 for name in CONFIGS if name.startswith("regnetz") and name != "regnetz_b16"}


def size_code(size: str) -> str:
    """'600mf' -> '006', '1.6gf' -> '016', '32gf' -> '320' (hundreds of MF)."""
    value = float(size[:-2]) * (1 if size.endswith("mf") else 1000)
    return f"{int(round(value / 100)):03d}"


def keras_applications_name(variant: str) -> str:
    """The keras.applications model name of a named variant: regnety_600mf -> RegNetY006."""
    family, size = resolve_variant(variant).split("_")
    return f"RegNet{family[-1].upper()}{size_code(size)}"


def _aliases() -> dict[str, str]:
    table = {}
    for name in VARIANTS:
        if name.startswith("regnetz"):           # regnetz_b16, regnetzb16; timm's old regnetz_040h
            table.update({name: name, name.replace("_", ""): name, name.replace("_h", "h"): name})
            continue
        family, size, *tv = name.split("_")      # regnety_800mf_tv: its spellings end in _tv
        letter, code = family[-1], size_code(size)
        spellings = [f"{family}_{size}", f"{letter}{size}", f"{family}{code}", f"{family}_{code}"]
        if size.endswith("gf") and "." not in size:
            spellings += [f"{family}_{size[:-2]}.0gf", f"{letter}{size[:-2]}.0gf"]
        if letter == "y":
            spellings += [size] + ([f"{size[:-2]}.0gf"] if size.endswith("gf") and "." not in size else [])
        for s in spellings:
            table[s + "".join(f"_{t}" for t in tv)] = name
    return table


ALIASES = _aliases()


def resolve_variant(variant: str) -> str:
    """Canonical variant name for any accepted spelling; ValueError naming close ones."""
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a string or RegNetConfig, got {type(variant).__name__}")
    key = re.sub(r"\s+", "", variant.lower()).replace("-", "_")
    if key in ALIASES:
        return ALIASES[key]
    close = difflib.get_close_matches(key, list(ALIASES), n=6, cutoff=0.5)
    suggestions = list(dict.fromkeys(ALIASES[c] for c in close))[:3]
    hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    raise ValueError(
        f"Unknown RegNet variant {variant!r}.{hint} Valid variants: {', '.join(VARIANTS)} "
        f"(also accepted: '600mf' for RegNetY, 'regnety006', 'y600mf').")


def get_config(variant) -> RegNetConfig | RegNetZConfig:
    """The config of a variant name, or a RegNetConfig / RegNetZConfig itself."""
    if isinstance(variant, (RegNetConfig, RegNetZConfig)):
        return variant
    return CONFIGS[resolve_variant(variant)]


class _Count:
    """Multiply-adds and parameters of convolutions and BN layers, following the spatial size."""

    def __init__(self, image_size):
        self.h = self.w = image_size
        self.flops = self.params = self.bn_stats = self.acts = 0

    def conv(self, w_in, w_out, k, stride=1, groups=1, bias=False):
        self.h, self.w = (self.h - 1) // stride + 1, (self.w - 1) // stride + 1
        hw = self.h * self.w
        self.flops += k * k * w_in * w_out * hw // groups + (w_out * hw if bias else 0)
        self.params += k * k * w_in * w_out // groups + (w_out if bias else 0)
        self.acts += w_out * hw

    def pointwise(self, w_in, w_out):
        """A 1x1 conv with bias on a pooled (1x1) input, as in SE; the spatial size is kept."""
        self.flops += w_in * w_out + w_out
        self.params += w_in * w_out + w_out

    def bn(self, w):
        self.params += 2 * w
        self.bn_stats += 2 * w

    def result(self, features, num_classes):
        if num_classes:
            self.flops += features * num_classes + num_classes
            self.params += features * num_classes + num_classes
        return dict(flops=self.flops, params=self.params, bn_stats=self.bn_stats, acts=self.acts)


def complexity(config, image_size: int = 224, num_classes: int = 1000) -> dict:
    """Multiply-adds, parameters (weights, as pycls and timm count), BN statistics and activations
    (`acts`: output elements of every convolution, Dollár et al. 2021's runtime predictor)."""
    cfg = get_config(config)
    cx = _Count(image_size)
    if isinstance(cfg, RegNetZConfig):
        return _complexity_z(cfg, cx, num_classes)
    cx.conv(3, STEM_WIDTH, 3, stride=2)
    cx.bn(STEM_WIDTH)
    w_in = STEM_WIDTH
    for st in cfg.stages():
        w_out, w_b = st["width"], int(round(st["width"] * st["bottleneck_ratio"]))
        for i in range(st["depth"]):
            stride = 2 if i == 0 else 1
            if stride != 1 or w_in != w_out:
                h, w = cx.h, cx.w
                cx.conv(w_in, w_out, 1, stride=stride)
                cx.bn(w_out)
                cx.h, cx.w = h, w
            cx.conv(w_in, w_b, 1)
            cx.bn(w_b)
            cx.conv(w_b, w_b, 3, stride=stride, groups=w_b // st["group_width"])
            cx.bn(w_b)
            if cfg.se_ratio:
                w_se = int(round(w_in * cfg.se_ratio))
                cx.pointwise(w_b, w_se)
                cx.pointwise(w_se, w_b)
            cx.conv(w_b, w_out, 1)
            cx.bn(w_out)
            w_in = w_out
    return cx.result(w_in, num_classes)


def _complexity_z(cfg, cx, num_classes):
    w_in = 3
    for w, stride in cfg.stem_convs():
        cx.conv(w_in, w, 3, stride=stride)
        cx.bn(w)
        w_in = w
    for b in cfg.blocks():
        cx.conv(b["w_in"], b["w_mid"], 1)
        cx.bn(b["w_mid"])
        cx.conv(b["w_mid"], b["w_mid"], 3, stride=b["stride"], groups=b["groups"])
        cx.bn(b["w_mid"])
        cx.pointwise(b["w_mid"], b["w_se"])
        cx.pointwise(b["w_se"], b["w_mid"])
        cx.conv(b["w_mid"], b["w_out"], 1)
        cx.bn(b["w_out"])
    if cfg.num_features:
        cx.conv(cfg.widths[-1], cfg.num_features, 1)
        cx.bn(cfg.num_features)
    return cx.result(cfg.features, num_classes)
