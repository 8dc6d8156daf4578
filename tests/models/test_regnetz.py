"""RegNetZ: timm's parameter counts and logits on the same weights, and the workbench's tools on a Z model."""
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import FLOAT32_ATOL, downloads, float64_outputs, needs_timm, slow

import workbench as wb
from workbench.models.contract import feature_extractor
from workbench.models.design import CONFIGS, RegNetZConfig, complexity
from workbench.deploy.export import export_all
from workbench.data.folders import load_folder
from workbench.data.sample import sample_dataset

Z = [name for name in CONFIGS if name.startswith("regnetz")]
WIDE = (192, 256)                        # a non-square size, besides each model's native one
# One Z of each build: 3x3 stem (ByobNet), tiered stem (ByobNet), timm's RegNet class with a final conv.
EXACT = ("regnetz_b16", "regnetz_d8", "regnetz_040_h")
# A small Z on the tiered stem: every Z part (stem, expansion, grouped 3x3, SE, no-shortcut first blocks,
# final 1x1 conv) at a size that fine-tunes in seconds.
TINY_Z = RegNetZConfig(depths=(1, 2, 2, 1), widths=(16, 24, 32, 48), group_width=8, bottleneck_ratio=2.0,
                       stem="tiered", stem_width=16, num_features=64, name="tiny_regnetz")


def native(name):
    return wb.list_weights(name)[0].train_size


@pytest.mark.parametrize("name", ["regnetz_b16", "regnetz_d8", "regnetz_040_h"])
def test_parameter_count_equals_computed_complexity(name):
    model = wb.regnet(name)
    cx = complexity(name)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == cx["params"]
    assert model.count_params() == cx["params"] + cx["bn_stats"]
    assert [s for s in wb.STAGES if wb.stage_layers(model, s)] == list(wb.STAGES)
    assert model.get_layer("head_pool").output.shape[-1] == CONFIGS[name].features


@pytest.fixture(scope="module")
def timm_z(tmp_path_factory):
    """timm's logits for every RegNetZ on random weights (perturbed BN), at the native and a wide size;
    and a RegNetY-200MF state dict."""
    out = tmp_path_factory.mktemp("torch_z")
    script = pathlib.Path(__file__).parents[1] / "torch_reference.py"
    specs = [f"{name}@{native(name)}x{native(name)},{WIDE[0]}x{WIDE[1]}" for name in Z] + ["regnety_002"]
    subprocess.run([sys.executable, str(script), str(out)] + specs, check=True)
    return out


@slow
@needs_timm
@pytest.mark.parametrize("name", Z)
def test_timm_state_dict_gives_identical_features_and_logits(name, timm_z):
    """float32 logits as timm's up to float32 rounding, at the native and a non-square size; for one Z of
    each build, in float64 (at the non-square size) feature maps and logits equal to 1e-9: the float32
    differences are rounding, not the model."""
    ref = timm_z / name
    ours = wb.regnet(name, weights=ref / f"{name}.safetensors", classifier_activation=None,
                     input_shape=(None, None, 3))
    for h, w in [(native(name), native(name)), WIDE]:
        expected = np.load(ref / f"logits_{h}x{w}.npy")
        logits = ours(np.load(ref / f"images_{h}x{w}.npy"), training=False).numpy()   # eager: no tracing
        print(f"{name} {h}x{w}: max |ours - timm| float32 logits {np.abs(logits - expected).max():.1e} "
              f"(logits up to {np.abs(expected).max():.1f})")
        assert np.abs(expected[0] - expected[1]).max() > 0.1            # the logits tell the images apart
        np.testing.assert_allclose(logits, expected, atol=FLOAT32_ATOL, rtol=0)
    if name in EXACT:
        h, w = WIDE
        features, logits = float64_outputs(name, ref / f"{name}.safetensors", np.load(ref / f"images_{h}x{w}.npy"))
        expected_f, expected = np.load(ref / f"features64_{h}x{w}.npy"), np.load(ref / f"logits64_{h}x{w}.npy")
        print(f"{name} {h}x{w}: max |ours - timm| float64 features {np.abs(features - expected_f).max():.1e}, "
              f"logits {np.abs(logits - expected).max():.1e}")
        np.testing.assert_allclose(features, expected_f, atol=1e-9, rtol=0)
        np.testing.assert_allclose(logits, expected, atol=1e-9, rtol=0)


@slow
@needs_timm
def test_ra3_tag_downloads_from_the_hub_and_matches_timm(timm_z, hub):
    ref = timm_z / "regnetz_d8"
    hub.put("timm/regnetz_d8.ra3_in1k", "model.safetensors", (ref / "regnetz_d8.safetensors").read_bytes())
    ours = wb.regnet("RegNetZ-D8", weights="ra3", classifier_activation=None, input_shape=(256, 256, 3))
    got = ours(np.load(ref / "images_256x256.npy"), training=False).numpy()
    np.testing.assert_allclose(got, np.load(ref / "logits_256x256.npy"), atol=FLOAT32_ATOL, rtol=0)
    assert downloads(hub)[-1].startswith("GET /timm/regnetz_d8.ra3_in1k/resolve/main/model.safetensors")
    assert ours.get_layer("stem_preprocess").mean == (0.5, 0.5, 0.5)      # timm's input for these weights


@slow
@needs_timm
def test_y_checkpoint_into_z_names_the_first_mismatching_tensor(timm_z):
    with pytest.raises(ValueError, match=r"first mismatching tensor is 's1\.b1\.conv1\.conv\.weight'"):
        wb.regnet("regnetz_040", weights=timm_z / "regnety_002" / "regnety_002.safetensors")
    with pytest.raises(ValueError, match="first mismatching tensor"):
        wb.regnet("regnetz_d32", weights=timm_z / "regnetz_d8" / "regnetz_d8.safetensors")


def test_weights_table_and_unknown_z_names():
    rows = wb.list_weights("regnetz_e8")
    assert [(r.tag, r.hub_id, r.train_size, r.test_size, r.convention) for r in rows] == [
        ("ra3_in1k", "timm/regnetz_e8.ra3_in1k", 256, 320, "half")]
    assert wb.list_weights("regnetz_040")[0].convention == "torch"
    with pytest.raises(ValueError, match="regnetz_e8"):
        wb.regnet("regnetz_e9")


@slow
def test_finetune_unfreezes_a_z_model_by_stage_and_exports(tmp_path):
    data = load_folder(sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=32,
                       augment=False, verbose=False)
    model = wb.regnet(TINY_Z, num_classes=data.num_classes, input_shape=(32, 32, 3))
    start = {v.path: v.numpy().copy() for v in model.trainable_weights}
    result = wb.finetune(model, data, epochs=2, unfreeze="0:head,1:all", restore_best=False, verbose=0)
    moved = {stage for stage in wb.STAGES for v in result.model.trainable_weights
             if v.path.startswith(stage) and not np.array_equal(v.numpy(), start[v.path])}
    assert moved == set(wb.STAGES)
    assert len(result.history["val_accuracy"]) == 2

    images = next(iter(data.val))[0].numpy()[:8]
    exported = export_all(result.model, tmp_path, "keras,hub", data.class_names, verbose=False)
    reloaded = keras.saving.load_model(exported["keras"]["path"])
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), result.model.predict(images, verbose=0),
                               atol=1e-6)
    hub = tf.saved_model.load(exported["hub"]["path"])
    np.testing.assert_allclose(hub(tf.constant(images)).numpy(),
                               feature_extractor(result.model).predict(images, verbose=0), atol=1e-5)
    assert exported["hub"]["feature_dim"] == 64
