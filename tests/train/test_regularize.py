"""Stochastic depth, EMA of weights, test-time augmentation, BatchNorm re-estimation, progressive resizing."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import slow, tiny_regnet

import workbench as wb
from workbench.train import bn_refresh as bn_stats, progressive
from workbench.train.finetune import finetune
from workbench.data.folders import load_folder
from workbench.models.regnet import DropPath
from workbench.data.sample import sample_dataset
from workbench.train.tta import tta_accuracy


@pytest.fixture(scope="module")
def data():
    return load_folder(sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=32,
                       augment="none", verbose=False)


def images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


@slow
def test_drop_path_per_block_off_in_inference_saved_and_loaded(tmp_path):
    model = tiny_regnet(drop_path_rate=0.2)
    rates = [layer.rate for layer in model.layers if isinstance(layer, DropPath)]
    blocks = sum(1 for layer in model.layers if layer.name.endswith("_add"))
    assert len(rates) == blocks - 1 and rates[-1] == pytest.approx(0.2)   # block 0 has rate 0: no layer
    assert np.all(np.diff(rates) > 0)                                      # timm: linear in the block index
    plain = tiny_regnet()
    assert {w.path: w.shape for w in model.weights} == {w.path: w.shape for w in plain.weights}  # no weights
    x = images()
    np.testing.assert_array_equal(model(x, training=False), plain(x, training=False))  # identity in inference
    a, b = model(x, training=True), model(x, training=True)               # (moves BatchNorm statistics)
    assert not np.allclose(a, b)                                           # random in training
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")                 # no custom_objects
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))
    wb.export(model, tmp_path / "m.tflite", "tflite")
    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "m.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], x[:1])
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), model(x[:1]), atol=1e-5)
    with pytest.raises(ValueError, match="drop_path_rate must be a number in"):
        tiny_regnet(drop_path_rate=1.5)


@slow
def test_ema_evaluates_and_returns_the_averaged_weights(data):
    exact = dict(unfreeze="0:all", restore_best=False, precision="float32", verbose=0)  # compared to 1e-4
    raw = finetune(tiny_regnet(), data, epochs=3, **exact)
    averaged = finetune(tiny_regnet(), data, epochs=3, ema=True, **exact)
    opt = averaged.model.optimizer.inner_optimizer
    assert opt.use_ema and 0.9 <= opt.ema_momentum < 1
    for v, avg in zip(opt._trainable_variables, opt._model_variables_moving_average):
        np.testing.assert_array_equal(v.numpy(), avg.numpy())             # the model holds the average
    np.testing.assert_allclose(raw.history["loss"], averaged.history["loss"], rtol=1e-4)  # training unchanged
    # (to rounding: Keras swaps weights in place with additions)
    assert raw.history["val_loss"] != averaged.history["val_loss"]        # evaluated on other weights
    again = finetune(tiny_regnet(), data, epochs=3, ema=True, **exact)
    assert again.history == averaged.history and averaged.policy["ema"] is True


@slow
def test_ema_with_a_frozen_backbone_and_cached_head_epochs(data):
    r = finetune(tiny_regnet(), data, epochs=3, unfreeze="0:head,2:stage4", ema=True, verbose=0)
    assert r.epochs_run == 3 and r.feature_cache_speedup and all(np.isfinite(r.history["val_loss"]))


@slow
def test_tta_reported_beside_the_plain_figure(data, tmp_path):
    r = finetune(tiny_regnet(), data, epochs=2, unfreeze="0:all", tta=True, output_dir=tmp_path, verbose=0)
    ev = r.evaluation
    assert ev["tta_views"] == 5 and 0 <= ev["tta_val_accuracy"] <= 1   # trained without flips: crops only
    assert ev["val_accuracy"] == pytest.approx(r.best_val_accuracy)
    metrics = wb.write_report(r.model, data, r, tmp_path, "tiny")
    assert metrics["tta_val_accuracy"] == ev["tta_val_accuracy"] and metrics["training_policy"]["tta"] is True
    flipped = tta_accuracy(r.model, data.val, flip=True)
    assert flipped["tta_views"] == 10 and flipped["val_accuracy"] == ev["val_accuracy"]


def test_tta_without_a_head_is_refused_before_training(data):
    backbone = tiny_regnet(include_top=False, pooling="avg")
    with pytest.raises(ValueError, match="tta=True .* has no classifier head"):
        finetune(backbone, data, epochs=1, tta=True, verbose=0)
    with pytest.raises(ValueError, match="no classifier head"):
        tta_accuracy(backbone, data.val, flip=False)


def test_bn_refresh_is_the_mean_and_variance_of_the_training_images(data):
    model = tiny_regnet()
    bn = model.get_layer("stem_bn")
    frozen = model.get_layer("stage1_block1_bn1")
    frozen.trainable = False
    before = frozen.moving_mean.numpy().copy()
    used = bn_stats.refresh_bn_statistics(model, data.train_plain)
    assert used == data.num_train
    conv = keras.Model(model.inputs, model.get_layer("stem_conv").output)
    acts = np.concatenate([conv(x).numpy() for x, _ in data.train_plain]).reshape(-1, bn.moving_mean.shape[0])
    np.testing.assert_allclose(bn.moving_mean.numpy(), acts.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), acts.var(0), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), before)     # frozen layers keep theirs


@slow
def test_bn_refresh_in_finetune_changes_validation_only(data):
    runs = {flag: finetune(tiny_regnet(), data, epochs=2, unfreeze="0:all", bn_refresh=flag, verbose=0)
            for flag in (False, True)}
    assert runs[False].history["loss"] == runs[True].history["loss"]    # training is the same
    assert runs[False].history["val_loss"] != runs[True].history["val_loss"]
    assert runs[True].policy["bn_refresh"] is True


@slow
def test_progressive_resizing_plan_and_run():
    assert progressive.phases(10, 128) == [(0, 4, 80), (4, 7, 104), (7, 10, 128)]
    assert progressive.phases(2, 32) == [(0, 2, 32)]
    data = load_folder(sample_dataset(), image_size=64, batch_size=16, seed=0, max_train_images=32,
                       augment="none", verbose=False)
    r = finetune(tiny_regnet(size=64), data, epochs=5, unfreeze="0:all", progressive=True, verbose=0)
    assert r.progressive["sides"] == [40, 40, 48, 48, 64] and r.epochs_run == 5
    assert r.model.input_shape == (None, 64, 64, 3) and "seconds_saved" in r.progressive
    again = finetune(tiny_regnet(size=64), data, epochs=5, unfreeze="0:all", progressive=True, verbose=0)
    assert again.history == r.history
