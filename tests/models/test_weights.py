"""Weight import: outputs identical to the reference implementations on the same weights."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import workbench as wb
from conftest import FLOAT32_ATOL, float64_outputs, needs_timm, sweep
from workbench.models import convert as wio

KERAS_REFERENCE = [("regnety_200mf", "RegNetY002"), ("regnety_400mf", "RegNetY004"),
                   ("regnety_600mf", "RegNetY006"), ("regnetx_200mf", "RegNetX002"),
                   ("regnetx_400mf", "RegNetX004"), ("regnetx_600mf", "RegNetX006")]
TIMM_REFERENCE = [("regnety_200mf", "regnety_002"), ("regnety_400mf", "regnety_004"),
                  ("regnety_800mf", "regnety_008"), ("regnetx_200mf", "regnetx_002"),
                  ("regnetx_400mf", "regnetx_004"), ("regnetx_800mf", "regnetx_008")]


def keras_reference_h5(cls_name, path, include_top=True):
    """A tf_keras.applications RegNet with random weights and BN statistics, saved as .h5."""
    import tf_keras
    ref = getattr(tf_keras.applications, cls_name)(weights=None, include_top=include_top,
                                                   classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in ref.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            n = layer.gamma.shape
            layer.set_weights([rng.uniform(0.3, 0.7, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)])
    ref.save_weights(path)
    return ref


@pytest.fixture(scope="module")
def y200_h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "regnety002.h5"
    keras_reference_h5("RegNetY002", str(path))
    return path


@pytest.mark.parametrize("variant,cls_name", sweep(KERAS_REFERENCE))
def test_keras_applications_h5_gives_identical_logits(variant, cls_name, tmp_path):
    path = str(tmp_path / f"{cls_name}.h5")
    ref = keras_reference_h5(cls_name, path)
    ours = wb.regnet(variant, weights=path, classifier_activation=None)
    x = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    expected = ref.predict(x, verbose=0)
    got = ours.predict(x, verbose=0)
    print(f"{variant}: max |ours - tf_keras| = {np.abs(got - expected).max():.2e}"
          f" (logits up to {np.abs(expected).max():.1f})")
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def torch_reference(tmp_path_factory, request):
    """timm logits and state dicts for the TIMM_REFERENCE archs this run selected, from one PyTorch process."""
    archs = sorted({item.callspec.params["arch"] for item in request.session.items
                    if item.module is request.module and "arch" in getattr(getattr(item, "callspec", None),
                                                                           "params", {})})
    out = tmp_path_factory.mktemp("torch")
    script = pathlib.Path(__file__).parents[1] / "torch_reference.py"
    subprocess.run([sys.executable, str(script), str(out)] + archs, check=True)
    return out


@needs_timm
@pytest.mark.parametrize("flavor", ["safetensors", "pyth"])
@pytest.mark.parametrize("variant,arch", sweep(TIMM_REFERENCE))
def test_timm_and_pycls_state_dicts_give_identical_logits(variant, arch, flavor, torch_reference):
    ref = torch_reference / arch
    ours = wb.regnet(variant, weights=ref / f"{arch}.{flavor}", classifier_activation=None,
                     input_shape=(160, 160, 3))
    expected = np.load(ref / "logits_160x160.npy")
    got = ours(np.load(ref / "images_160x160.npy"), training=False).numpy()
    print(f"{variant} ({flavor}): max |ours - timm| = {np.abs(got - expected).max():.2e} "
          f"(logits up to {np.abs(expected).max():.1f})")
    np.testing.assert_allclose(got, expected, atol=FLOAT32_ATOL, rtol=0)
    features, logits = float64_outputs(variant, ref / f"{arch}.{flavor}", np.load(ref / "images_160x160.npy"))
    print(f"  float64: features {np.abs(features - np.load(ref / 'features64_160x160.npy')).max():.1e}, "
          f"logits {np.abs(logits - np.load(ref / 'logits64_160x160.npy')).max():.1e}")
    np.testing.assert_allclose(features, np.load(ref / "features64_160x160.npy"), atol=1e-9, rtol=0)
    np.testing.assert_allclose(logits, np.load(ref / "logits64_160x160.npy"), atol=1e-9, rtol=0)


def test_new_head_for_other_class_counts(y200_h5):
    full = wb.regnet("regnety_200mf", weights=y200_h5)
    five = wb.regnet("regnety_200mf", weights=y200_h5, num_classes=5)
    assert five.get_layer("head_fc").kernel.shape == (368, 5)
    for name in ("stem_conv", "stage4_block7_conv3"):
        np.testing.assert_array_equal(five.get_layer(name).kernel.numpy(),
                                      full.get_layer(name).kernel.numpy())


def test_keras3_weights_round_trip(tmp_path):
    model = wb.regnet("regnetx_200mf", num_classes=4, input_shape=(64, 64, 3))
    model.save_weights(tmp_path / "m.weights.h5")
    again = wb.regnet("regnetx_200mf", num_classes=4, input_shape=(64, 64, 3),
                      weights=tmp_path / "m.weights.h5")
    x = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))


def test_wrong_variant_names_first_mismatching_tensor(y200_h5):
    with pytest.raises(ValueError) as err:
        wb.regnet("regnety_400mf", weights=y200_h5)
    msg = str(err.value)
    assert "regnety002_Stage_0_YBlock_0_conv_1x1_1/kernel" in msg
    assert "(1, 1, 32, 24)" in msg and "(1, 1, 32, 48)" in msg


def test_other_architecture_is_refused(tmp_path):
    import tf_keras
    tf_keras.applications.MobileNetV3Small(weights=None).save_weights(tmp_path / "mnv3.h5")
    with pytest.raises(ValueError, match="not part of a keras.applications RegNet"):
        wb.regnet("regnety_200mf", weights=tmp_path / "mnv3.h5")


def test_missing_and_non_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.h5"):
        wb.regnet("regnety_200mf", weights=tmp_path / "nothere.h5")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a weights file"):
        wb.regnet("regnety_200mf", weights=tmp_path / "notes.pth")


def test_keras_download_is_hash_checked_and_cached(y200_h5, tmp_path, monkeypatch):
    """The real download path of weights="keras" (keras.utils.get_file) against a local origin."""
    import hashlib
    digest = hashlib.sha256(y200_h5.read_bytes()).hexdigest()
    monkeypatch.setattr(wio, "KERAS_BASE_URL", y200_h5.parent.as_uri() + "/")
    monkeypatch.setitem(wio.KERAS_HASHES, "y002", (digest, digest))
    monkeypatch.setattr(wio, "CACHE_DIR", str(tmp_path))
    model = wb.regnet("regnety_200mf", weights="keras")
    assert (tmp_path / "models" / "regnety002.h5").exists()
    ref = wb.regnet("regnety_200mf", weights=y200_h5)
    np.testing.assert_array_equal(model.get_layer("head_fc").kernel.numpy(),
                                  ref.get_layer("head_fc").kernel.numpy())
    monkeypatch.setitem(wio.KERAS_HASHES, "y002", ("0" * 64, "0" * 64))
    (tmp_path / "models" / "regnety002.h5").unlink()
    with pytest.raises(wb.WeightsUnavailableError, match="regnety002.h5"):
        wb.regnet("regnety_200mf", weights="keras")


def test_keras_offline_error_says_how_to_supply_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(wio, "KERAS_BASE_URL", (tmp_path / "offline").as_uri() + "/")
    monkeypatch.setattr(wio, "CACHE_DIR", str(tmp_path))
    with pytest.raises(wb.WeightsUnavailableError) as err:
        wb.regnet("regnetx_600mf", weights="keras", num_classes=3)
    assert "regnetx006_notop.h5" in str(err.value) and "weights='/path/to/" in str(err.value)
