"""Published weights: the table, tags, and downloads from a loopback Hub (HF_ENDPOINT)."""
import json
import pathlib
import pickle
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FLOAT32_ATOL, downloads, needs_timm, slow
from safetensors.numpy import save

import workbench as wb
from workbench.models import published as pretrained
from workbench import recipe
from workbench.models import convert as wio
from workbench.models.contract import CLASSIFIER
from workbench.models.design import VARIANTS, complexity, get_config

SMALL = (64, 64, 3)
Y200 = "timm/regnety_002.pycls_in1k"


def timm_state_dict(model):
    """A workbench model's weights under timm's names and PyTorch layouts (the reader's inverse)."""
    parts = {ours: theirs for theirs, ours in wio._TIMM_PARTS.items()}
    names = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias",
             "moving_mean": "running_mean", "moving_variance": "running_var"}
    top = {"stem_conv": "stem.conv", "stem_bn": "stem.bn", CLASSIFIER: "head.fc"}
    state = {}
    for layer in model.layers:
        m = re.fullmatch(r"stage(\d)_block(\d+)_(.+)", layer.name)
        for var in layer.weights:
            value = var.numpy()
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T if value.ndim == 2 else value
            module = f"s{m[1]}.b{m[2]}.{parts[m[3]]}" if m else top[layer.name]
            state[f"{module}.{names[var.name]}"] = np.ascontiguousarray(value)
    return state


@pytest.fixture(scope="module")
def y200():
    """(a RegNetY-200MF with non-trivial weights, its timm-format safetensors bytes)."""
    model = wb.regnet("regnety_200mf", input_shape=SMALL, seed=3)
    return model, save(timm_state_dict(model))


# ---------------------------------------------------------------- the table

def test_table_covers_every_timm_regnet_checkpoint_once():
    rows = pretrained.table()
    hub = [r for r in rows if r.hub_id]
    assert len(hub) == 68 and len(rows) - len(hub) == 24      # timm's RegNetX/Y/Z tags, keras.applications
    assert len({(r.variant, r.tag) for r in rows}) == len(rows)
    assert {r.variant for r in rows} == set(VARIANTS)
    assert all(r.file == "model.safetensors" and r.revision for r in hub)
    assert all(r.hub_id == f"timm/{pretrained.timm_name(r.variant)}.{r.tag}" for r in hub)
    assert {r.license for r in rows} == {"mit", "bsd-3-clause", "apache-2.0", "cc-by-nc-4.0", "seer-license"}


@pytest.mark.parametrize("variant,tag,top1", [
    ("regnety_200mf", "pycls_in1k", 70.278), ("regnety_600mf", "pycls_in1k", 75.27),
    ("regnety_1.6gf", "tv2_in1k", 80.668), ("regnety_4gf", "ra3_in1k", 83.044),
    ("regnety_32gf", "tv2_in1k", 83.162), ("regnety_800mf_tv", "tv2_in1k", 78.674),
    ("regnetz_e8", "ra3_in1k", 85.036)])
def test_imagenet_is_the_best_commercially_licensed_in1k_checkpoint(variant, tag, top1):
    info = pretrained.resolve(get_config(variant), "imagenet")
    assert (info.tag, info.top1, info.num_classes) == (tag, top1, 1000)


def test_imagenet_never_picks_a_non_commercial_license():
    picks = [pretrained.best(v) for v in VARIANTS]
    assert all(p is None or p.commercial for p in picks)
    assert pretrained.best("regnety_64gf") is None                  # SEER weights only


def test_tag_spellings_resolve():
    y16 = get_config("regnety_16gf")
    assert pretrained.resolve(get_config("600mf"), "pycls").tag == "pycls_in1k"
    assert pretrained.resolve(y16, "tv2").tag == "tv2_in1k"
    assert pretrained.resolve(y16, "sw_in12k_ft_in1k").hub_id == "timm/regnety_160.sw_in12k_ft_in1k"
    assert pretrained.resolve(y16, "timm/regnety_160.swag_ft_in1k").tag == "swag_ft_in1k"
    pinned = pretrained.resolve(y16, "hf-hub:timm/regnety_160.deit_in1k@abc123")
    assert (pinned.tag, pinned.revision) == ("deit_in1k", "abc123")
    assert pretrained.resolve(get_config("4gf"), "ra3").test_size == 288


def test_bad_tags_say_what_exists():
    with pytest.raises(ValueError, match="Tags of regnety_600mf: keras, pycls_in1k"):
        pretrained.resolve(get_config("600mf"), "swag")
    with pytest.raises(ValueError, match=r"not a tag of regnety_600mf \(it exists for regnetx_1.6gf"):
        pretrained.resolve(get_config("600mf"), "tv2")
    with pytest.raises(ValueError, match="holds weights for regnety_16gf, not regnety_200mf"):
        pretrained.resolve(get_config("200mf"), "timm/regnety_160.swag_ft_in1k")
    with pytest.raises(ValueError, match="No weights are published for tiny"):
        wb.regnet(wb.RegNetConfig(16, 16.0, 2.0, 8, 8, name="tiny"), weights="imagenet")


def test_non_commercial_license_is_printed_once(capsys):
    pretrained._announced.discard("timm/regnety_320.seer_ft_in1k")
    for _ in range(2):
        pretrained.resolve(get_config("32gf"), "seer_ft_in1k")
    assert capsys.readouterr().out.count("SEER license") == 1
    pretrained.resolve(get_config("32gf"), "tv2")
    assert capsys.readouterr().out == ""


def test_list_weights_prints_a_table():
    table = wb.list_weights("1.6GF")
    assert [r.tag for r in table] == ["tv2_in1k", "pycls_in1k", "keras"]
    text = repr(table)
    assert "*tv2_in1k" in text and "80.67" in text and "timm/regnety_016.tv2_in1k" in text
    assert len(wb.list_weights()) == len(pretrained.table())


# ---------------------------------------------------------------- downloads from the loopback Hub

def test_first_download_then_cache_hit_without_a_request(hub, y200):
    model, data = y200
    hub.put(Y200, "model.safetensors", data)
    first = wb.regnet("200mf", weights="pycls", input_shape=SMALL)
    assert downloads(hub) == [f"HEAD /{Y200}/resolve/main/model.safetensors",
                              f"GET /{Y200}/resolve/main/model.safetensors"]
    again = wb.regnet("200mf", weights="imagenet", input_shape=SMALL)
    assert len(downloads(hub)) == 2                                   # served from the HF cache
    for layer in model.layers:
        for a, b, c in zip(layer.get_weights(), first.get_layer(layer.name).get_weights(),
                           again.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
    assert first.get_layer("stem_preprocess").std == pytest.approx((0.229, 0.224, 0.225))


def test_offline_error_names_repo_file_and_remedy(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(wb.WeightsUnavailableError) as err:
        wb.regnet("200mf", weights="pycls", input_shape=SMALL)
    assert time.monotonic() - start < 5 and downloads(hub) == []
    msg = str(err.value)
    assert f"model.safetensors of {Y200}" in msg and "HF_HUB_OFFLINE" in msg
    assert "weights='/path/to/model.safetensors'" in msg and "Hugging Face cache" in msg


def test_unreachable_hub_fails_fast(hub, monkeypatch):
    hub.stop()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    start = time.monotonic()
    with pytest.raises(wb.WeightsUnavailableError, match="cannot be reached"):
        wb.regnet("200mf", weights="pycls", input_shape=SMALL)
    assert time.monotonic() - start < 5


def test_truncated_file_gets_a_clear_error(hub, y200):
    hub.put(Y200, "model.safetensors", y200[1][: len(y200[1]) // 2])
    with pytest.raises(ValueError, match=f"model.safetensors of {Y200} .* is truncated or corrupt"):
        wb.regnet("200mf", weights="pycls", input_shape=SMALL)


def test_non_safetensors_from_the_hub_is_refused(hub):
    hub.put(Y200, "model.safetensors", pickle.dumps({"stem.conv.weight": [0.0]}))
    with pytest.raises(ValueError, match="is not a safetensors file .* never pickle"):
        wb.regnet("200mf", weights="pycls", input_shape=SMALL)
    hub.put("someone/regnet", "pytorch_model.bin", b"\x80\x04pickle")
    with pytest.raises(ValueError, match="someone/regnet has no model.safetensors .* safetensors only"):
        wb.regnet("200mf", weights="someone/regnet", input_shape=SMALL)


def test_hub_id_of_another_architecture_names_the_first_mismatching_tensor(hub):
    y400 = wb.regnet("regnety_400mf", input_shape=SMALL)
    hub.put("someone/y400-finetuned", "model.safetensors", save(timm_state_dict(y400)))
    with pytest.raises(ValueError, match=r"first mismatching tensor is 'stem.conv.weight'|"
                                         r"first mismatching tensor is 's1.b1"):
        wb.regnet("200mf", weights="someone/y400-finetuned", input_shape=SMALL)


def test_recipe_falls_back_to_random_init_and_says_so(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights, size = recipe.prepare_weights("regnety_200mf", "pycls", "auto", default_size=64)
    model, pretrained_ = recipe.build_model("regnety_200mf", weights, 3, 64)
    out = capsys.readouterr().out
    assert (weights, size, pretrained_) == (None, 64, False)
    assert out.count("FROM RANDOM INITIALIZATION") == 1 and f"of {Y200}" in out


def test_recipe_picks_the_native_size_it_can_afford(hub, y200, capsys):
    hub.put(Y200, "model.safetensors", y200[1])
    weights, size = recipe.prepare_weights("regnety_200mf", "pycls", "auto", default_size=128)
    assert weights.endswith("model.safetensors") and size == 224
    assert "image_size 224" in capsys.readouterr().out
    assert recipe.prepare_weights("regnety_200mf", weights, 96, default_size=128) == (weights, 96)
    size, why = recipe.native_image_size("regnety_4gf", "ra3", 224, budget_gf=100)
    assert size == 288 and "native size of ra3_in1k" in why
    size, why = recipe.native_image_size("regnety_4gf", "ra3", 224, budget_gf=1)
    assert size == 224 and "6.6 GF per training image" in why and "image_size=288" in why


# ---------------------------------------------------------------- parity with timm on served weights

TV = [("regnetx_400mf_tv", "regnetx_004_tv"), ("regnety_800mf_tv", "regnety_008_tv"),
      ("regnety_8gf_tv", "regnety_080_tv")]


@pytest.fixture(scope="module")
def tv_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_tv")
    script = pathlib.Path(__file__).parents[1] / "torch_reference.py"
    subprocess.run([sys.executable, str(script), str(out)] + [a for _, a in TV], check=True)
    return out


@slow
@needs_timm
@pytest.mark.parametrize("variant,arch", TV)
def test_torchvision_shaped_variants_match_timm_on_hub_weights(variant, arch, tv_reference, hub):
    ref = tv_reference / arch
    hub.put(f"timm/{arch}.tv2_in1k", "model.safetensors", (ref / f"{arch}.safetensors").read_bytes())
    ours = wb.regnet(variant, weights="tv2", classifier_activation=None, input_shape=(160, 160, 3))
    expected = np.load(ref / "logits_160x160.npy")
    got = ours(np.load(ref / "images_160x160.npy"), training=False).numpy()
    print(f"{variant} (tv2 via loopback Hub): max |ours - timm| = {np.abs(got - expected).max():.2e}")
    print("request log:", downloads(hub))
    np.testing.assert_allclose(got, expected, atol=FLOAT32_ATOL, rtol=0)


@slow
@needs_timm
def test_every_variant_has_timms_parameter_count():
    """The big SEER sizes too, counted without building them (timm on the meta device, ours computed)."""
    script = pathlib.Path(__file__).parents[1] / "torch_reference.py"
    names = {pretrained.timm_name(v): v for v in VARIANTS}
    out = subprocess.run([sys.executable, str(script), "--params", *names], check=True,
                         capture_output=True, text=True).stdout
    counts = json.loads(out.strip().splitlines()[-1])
    assert {names[a]: n for a, n in counts.items()} == {v: complexity(v)["params"] for v in VARIANTS}
