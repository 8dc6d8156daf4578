"""The learning-rate range test on a tiny RegNet: suggestion rules, the test itself, weights put back."""

import matplotlib.figure
import numpy as np
import pytest
from conftest import tiny_regnet, write_classes

from workbench.data.folders import load_folder
from workbench.train.lr_find import lr_find, suggest_lr


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = write_classes(tmp_path_factory.mktemp("lr_find") / "photos", {"ant": 8, "bee": 8, "cat": 8})
    return load_folder(root, image_size=32, batch_size=8, val_split=0.5, seed=0, augment=False)


def test_suggestion_rules():
    lrs = np.geomspace(1e-6, 1, 60)
    x = np.log10(lrs)
    losses = 2.0 - 1.5 / (1 + np.exp(-3 * (x + 3))) + np.where(x > -1, 10 * (x + 1) ** 2, 0)  # falls, then diverges
    for method in ("valley", "steep", "minimum"):
        lr = suggest_lr(lrs, losses, method)
        assert 1e-5 < lr < 1e-1, (method, lr)
    assert suggest_lr(lrs, losses, "steep") == pytest.approx(1e-3, rel=0.3)
    with pytest.raises(ValueError, match="method"):
        suggest_lr(lrs, losses, "best")


def test_lr_find(tiny_data, tmp_path):
    tiny_model = tiny_regnet()
    before = [w.copy() for w in tiny_model.get_weights()]
    result = lr_find(tiny_model, tiny_data, start_lr=1e-6, end_lr=1.0, steps=12, path=tmp_path / "lr.png")
    assert len(result.lrs) == len(result.losses) >= 5  # the 12-image train set repeats
    assert np.all(np.diff(result.lrs) > 0) and result.lrs[0] == pytest.approx(1e-6)
    assert np.isfinite(result.suggestion) and 1e-6 <= result.suggestion <= 1.0
    assert isinstance(result.figure, matplotlib.figure.Figure) and (tmp_path / "lr.png").stat().st_size > 1000
    after = tiny_model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    with pytest.raises(ValueError, match="start_lr"):
        lr_find(tiny_model, tiny_data, start_lr=1.0, end_lr=1e-3)
