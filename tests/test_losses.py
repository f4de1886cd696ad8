import math

import numpy as np
import torch

from airrep.losses import pairwise_accuracy, weighted_ranknet


def slow_ranknet(pred, target, t_min, t_max):
    """Independent double loop over subset pairs, with math.log1p instead of torch's BCE."""
    total, weights = 0.0, 0.0
    for i in range(pred.shape[0]):
        for a in range(pred.shape[1]):
            for b in range(pred.shape[1]):
                delta = target[i, a] - target[i, b]
                if delta >= t_min:
                    w = min(delta, t_max)
                    margin = pred[i, a] - pred[i, b]
                    total += w * math.log1p(math.exp(-margin))  # -log sigmoid(margin)
                    weights += 1
    return total / weights


def test_weighted_ranknet_matches_double_loop():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(5, 7))
    target = rng.normal(scale=3, size=(5, 7))
    target[0, 1] = target[0, 2] + 0.05  # a pair below t_min must be ignored
    got = weighted_ranknet(torch.tensor(pred), torch.tensor(target), 0.1, 5.0).item()
    assert abs(got - slow_ranknet(pred, target, 0.1, 5.0)) < 1e-9


def test_weighted_ranknet_clips_and_ignores():
    pred = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.05, 100.0]])
    loss = weighted_ranknet(pred, target, 0.1, 5.0)
    # pairs: (2,0) Δ=100 → w=5, (2,1) Δ=99.95 → w=5; (1,0) Δ=0.05 ignored
    assert abs(loss.item() - 5 * math.log(2)) < 1e-6
    loss.backward()
    assert pred.grad[0, 2] < 0  # raising the better subset's score lowers the loss


def test_weighted_ranknet_no_pairs_is_zero_with_gradient_path():
    pred = torch.zeros(2, 3, requires_grad=True)
    loss = weighted_ranknet(pred, torch.ones(2, 3))
    assert loss.item() == 0.0
    loss.backward()


def test_pairwise_accuracy():
    target = torch.tensor([[0.0, 1.0, 2.0]])
    assert pairwise_accuracy(torch.tensor([[0.0, 1.0, 2.0]]), target) == 1.0
    assert pairwise_accuracy(torch.tensor([[2.0, 1.0, 0.0]]), target) == 0.0
