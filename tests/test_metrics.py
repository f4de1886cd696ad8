import numpy as np
import pytest
from scipy.stats import spearmanr

from airrep.metrics import classification_accuracy, lds


def slow_lds(pred, losses):
    values = []
    for p, loss_row in zip(pred, losses, strict=True):
        rho = spearmanr(p, -loss_row).statistic
        values.append(0.0 if np.isnan(rho) else rho)
    return float(np.mean(values))


def test_lds_matches_scipy_loop():
    rng = np.random.default_rng(1)
    losses = rng.normal(size=(30, 12))
    pred = -losses + rng.normal(scale=2, size=losses.shape)
    pred[3, :4] = pred[3, 4]  # ties
    assert abs(lds(pred, losses) - slow_lds(pred, losses)) < 1e-12


def test_lds_constant_row_counts_as_zero():
    losses = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    pred = np.array([[3.0, 2.0, 1.0], [5.0, 5.0, 5.0]])
    assert lds(pred, losses) == pytest.approx(0.5)
    assert slow_lds(pred, losses) == pytest.approx(0.5)


def test_lds_shape_mismatch():
    with pytest.raises(ValueError):
        lds(np.zeros((2, 3)), np.zeros((3, 2)))


def test_classification_accuracy_separable_vs_random():
    rng = np.random.default_rng(0)
    labels = ["a"] * 40 + ["b"] * 40
    separable = np.concatenate([rng.normal(0, 1, (40, 8)), rng.normal(4, 1, (40, 8))])
    noise = rng.normal(size=(80, 8))
    assert classification_accuracy(separable, labels) > 0.95
    assert classification_accuracy(noise, labels) < 0.8
