"""finetune writes TensorBoard event files to output_dir/tensorboard: the epochs' metrics as its history has them."""

import pytest
from conftest import tensorboard_scalars, tiny_regnet

from workbench.data.folders import load_folder
from workbench.data.sample import sample_dataset
from workbench.train.finetune import finetune


@pytest.fixture(scope="module")
def data():
    return load_folder(sample_dataset(), image_size=32, batch_size=16, seed=0, max_train_images=24,
                       augment=False, verbose=False)


def test_every_epoch_is_in_tensorboard(data, tmp_path):
    """A head epoch on cached features, then a staged one: both fits log to the same folders, by epoch."""
    r = finetune(tiny_regnet(), data, epochs=2, unfreeze="0:head,1:all", output_dir=tmp_path, verbose=0)
    train = tensorboard_scalars(tmp_path / "tensorboard" / "train")
    val = tensorboard_scalars(tmp_path / "tensorboard" / "validation")
    assert train["epoch_loss"] == pytest.approx(dict(enumerate(r.history["loss"])), rel=1e-6)
    assert val["epoch_accuracy"] == pytest.approx(dict(enumerate(r.history["val_accuracy"])), abs=1e-6)
    assert train["epoch_learning_rate"][1] == pytest.approx(r.history["lr"][1], rel=1e-6)
    assert not any("histogram" in tag or "graph" in tag for tag in train)  # cheap: scalars only


def test_tensorboard_off(data, tmp_path):
    finetune(tiny_regnet(), data, epochs=1, unfreeze="0:head", output_dir=tmp_path, tensorboard=False, verbose=0)
    assert (tmp_path / "checkpoints").is_dir() and not (tmp_path / "tensorboard").exists()
