"""The design space, the named models and their computed complexity."""
import pytest
from conftest import TINY

from workbench.models.design import (CONFIGS, PUBLISHED, PUBLISHED_SIZE, VARIANTS, RegNetConfig,
                              RegNetZConfig, complexity, generate_regnet, resolve_variant)

Z = ("regnetz_b16", "regnetz_c16", "regnetz_d8", "regnetz_d32", "regnetz_e8", "regnetz_040", "regnetz_040_h")


def test_every_paper_size_of_both_families_is_named():
    sizes = ["200mf", "400mf", "600mf", "800mf", "1.6gf", "3.2gf", "4gf", "6.4gf", "8gf",
             "12gf", "16gf", "32gf"]
    extra = {"regnetx_400mf_tv", "regnety_800mf_tv", "regnety_8gf_tv",     # timm's torchvision-shaped
             "regnety_64gf", "regnety_128gf", "regnety_256gf"}             # the SEER sizes
    assert set(VARIANTS) == {f"regnet{f}_{s}" for f in "xy" for s in sizes} | extra | set(Z)


@pytest.mark.parametrize("name", VARIANTS)
def test_complexity_matches_published_table(name):
    gf, mparams = PUBLISHED[name]
    cx = complexity(CONFIGS[name], PUBLISHED_SIZE.get(name, 224))
    assert cx["flops"] / 1e9 == pytest.approx(gf, rel=0.02)
    assert cx["params"] / 1e6 == pytest.approx(mparams, rel=0.02)


def test_quantized_linear_rule_gives_regnety_600mf_stages():
    widths, depths = generate_regnet(48, 32.54, 2.32, 15)
    assert widths == [48, 112, 256, 600] and depths == [1, 3, 7, 4]
    stages = CONFIGS["regnety_600mf"].stages()   # widths made divisible by the group width
    assert [s["width"] for s in stages] == [48, 112, 256, 608]
    assert [s["group_width"] for s in stages] == [16] * 4


def test_group_width_is_capped_by_stage_width():
    # RegNetX-8GF: group width 120 but a first stage of width 80.
    assert [s["group_width"] for s in CONFIGS["regnetx_8gf"].stages()] == [80, 120, 120, 120]


def test_any_point_of_the_design_space():
    cfg = TINY
    stages = cfg.stages()
    assert len(stages) == 4 and sum(s["depth"] for s in stages) == 8
    assert all(s["width"] % s["group_width"] == 0 for s in stages)
    assert complexity(cfg)["flops"] > 0


def test_invalid_design_points_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        generate_regnet(30, 20.0, 2.5, 10)
    with pytest.raises(ValueError, match="exactly 4"):
        RegNetConfig(w0=24, wa=1.0, wm=2.5, depth=3, group_width=8).stages()


@pytest.mark.parametrize("alias", ["regnety_600mf", "600mf", "600MF", "regnety006", "RegNetY006",
                                   "y600mf", "regnety_006", "RegNetY-600MF"])
def test_aliases(alias):
    assert resolve_variant(alias) == "regnety_600mf"


@pytest.mark.parametrize("alias,name", [
    ("regnetx_004_tv", "regnetx_400mf_tv"), ("x400mf_tv", "regnetx_400mf_tv"), ("800MF_tv", "regnety_800mf_tv"),
    ("regnety080_tv", "regnety_8gf_tv"), ("regnety_640", "regnety_64gf"), ("128GF", "regnety_128gf"),
    ("RegNetY2560", "regnety_256gf")])
def test_torchvision_shaped_and_seer_aliases(alias, name):
    assert resolve_variant(alias) == name


def test_torchvision_rounding_gives_torchvision_widths():
    # torchvision's regnet_y_800mf: stage widths 64, 144, 320, 784 (pycls' RegNetY-800MF: 64, 128, 320, 768).
    assert [s["width"] for s in CONFIGS["regnety_800mf_tv"].stages()] == [64, 144, 320, 784]
    assert [s["width"] for s in CONFIGS["regnety_800mf"].stages()] == [64, 128, 320, 768]


def test_x_aliases_and_gf_spellings():
    assert resolve_variant("RegNetX032") == "regnetx_3.2gf"
    assert resolve_variant("x4gf") == "regnetx_4gf"
    assert resolve_variant("regnety_4.0gf") == "regnety_4gf"
    assert resolve_variant("1.6GF") == "regnety_1.6gf"


def test_regnetz_stages_blocks_and_stems():
    d8, b16, z040 = CONFIGS["regnetz_d8"], CONFIGS["regnetz_b16"], CONFIGS["regnetz_040"]
    assert d8.stem_convs() == [(24, 2), (32, 1), (64, 2)] and b16.stem_convs() == [(32, 2)]
    assert [s["stride"] for s in d8.stages()] == [1, 2, 2, 2]       # the tiered stem strides 4
    assert [s["stride"] for s in b16.stages()] == [2, 2, 2, 2]
    first = d8.blocks()[0]     # ByobNet: expansion and SE width from the block input, rounded to 8
    assert (first["w_in"], first["w_mid"], first["groups"], first["w_se"], first["se_act"]) == (64, 256, 32, 64, "relu")
    # timm's regnetz_040 (its RegNet class): widths from the design-space rule, expansion of the block output.
    assert (z040.depths, z040.widths) == ((2, 6, 14, 6), (48, 104, 240, 528))
    first = z040.blocks()[0]
    assert (first["w_mid"], first["groups"], first["w_se"], first["se_act"]) == (192, 24, 8, "silu")
    assert (b16.features, z040.features, CONFIGS["regnetz_040_h"].features) == (1536, 528, 1536)
    with pytest.raises(ValueError, match="tiered"):
        RegNetZConfig(depths=(1, 1, 1, 1), widths=(8, 16, 24, 32), group_width=8, bottleneck_ratio=4.0, stem="7x7")
    with pytest.raises(ValueError, match="4 stages"):
        RegNetZConfig(depths=(1, 1, 1), widths=(8, 16, 24), group_width=8, bottleneck_ratio=4.0)


@pytest.mark.parametrize("alias,name", [("regnetz_b16", "regnetz_b16"), ("RegNetZ-D8", "regnetz_d8"),
                                        ("regnetzd32", "regnetz_d32"), ("regnetz_040h", "regnetz_040_h")])
def test_regnetz_aliases(alias, name):
    assert resolve_variant(alias) == name


def test_unknown_variant_names_the_closest():
    with pytest.raises(ValueError, match="regnetz_d8") as err:
        resolve_variant("regnetz_d9")
    assert "Valid variants" in str(err.value)
    with pytest.raises(ValueError, match="regnety_600mf") as err:
        resolve_variant("regnety_6000mf")
    assert "Valid variants" in str(err.value)
