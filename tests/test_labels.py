import math
import statistics

import numpy as np
import pytest

from airrep.labels import normalize


def slow_normalize(losses: list[list[float]]) -> list[list[float]]:
    """Column by column with python floats: (mean - loss) / pstdev, std 0 → 1, clipped."""
    n_subsets, n_dev = len(losses), len(losses[0])
    out = [[0.0] * n_dev for _ in range(n_subsets)]
    for j in range(n_dev):
        column = [float(losses[i][j]) for i in range(n_subsets)]
        mean = statistics.fmean(column)
        std = statistics.pstdev(column) or 1.0
        for i in range(n_subsets):
            out[i][j] = max(-10.0, min(10.0, (mean - column[i]) / std))
    return out


@pytest.mark.parametrize("shape", [(2, 1), (8, 30), (16, 5), (3, 100)])
def test_matches_slow_double_loop(shape):
    rng = np.random.default_rng(sum(shape))
    losses = rng.gamma(2.0, 1.5, size=shape) + rng.normal(0, 0.3, size=(1, shape[1]))
    got = normalize(losses)
    assert got.shape == shape
    expected = slow_normalize(losses.tolist())
    for i in range(shape[0]):
        for j in range(shape[1]):
            assert math.isclose(got[i, j], expected[i][j], rel_tol=1e-9, abs_tol=1e-9)


def test_higher_label_means_lower_loss():
    losses = np.array([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0]])
    labels = normalize(losses)
    for j in range(losses.shape[1]):
        assert list(np.argsort(labels[:, j])) == list(np.argsort(-losses[:, j]))
    # Each column of labels has mean 0 and (population) std 1.
    assert np.allclose(labels.mean(axis=0), 0)
    assert np.allclose(labels.std(axis=0), 1)


def test_constant_column_gives_zeros():
    losses = np.array([[2.5, 1.0], [2.5, 2.0], [2.5, 3.0]])
    labels = normalize(losses)
    assert np.all(labels[:, 0] == 0.0)
    assert np.all(np.isfinite(labels))
    assert labels[0, 1] > 0 > labels[2, 1]


@pytest.mark.parametrize("value, n_subsets", [(0.1, 3), (0.7, 7), (6.2, 10)])
def test_constant_column_of_inexact_floats_gives_zeros(value, n_subsets):
    losses = np.full((n_subsets, 2), value)
    losses[:, 1] = np.arange(n_subsets)
    assert np.allclose(normalize(losses)[:, 0], 0.0, atol=1e-6)


def test_outlier_is_clipped():
    n = 400
    losses = np.zeros((n, 2))
    losses[:, 1] = np.linspace(0, 1, n)
    losses[0, 0] = -1.0  # one subset far better than the rest: z = sqrt(n - 1) ≈ 20
    labels = normalize(losses)
    assert labels[0, 0] == 10.0
    assert slow_normalize(losses.tolist())[0][0] == 10.0
    losses[0, 0] = 1.0
    assert normalize(losses)[0, 0] == -10.0
    assert np.all(np.abs(labels) <= 10.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_losses_raise(bad):
    losses = np.ones((3, 4))
    losses[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        normalize(losses)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_wrong_rank_raises(shape):
    with pytest.raises(ValueError, match="n_subsets, n_dev"):
        normalize(np.zeros(shape))


def test_input_is_not_modified():
    losses = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    before = losses.copy()
    normalize(losses)
    assert np.array_equal(losses, before)
