"""Weighted pairwise ranking loss (paper §3.4)."""

from __future__ import annotations

import torch
from torch import nn


def weighted_ranknet(pred: torch.Tensor, target: torch.Tensor, t_min: float = 0.1,
                     t_max: float = 5.0) -> torch.Tensor:
    """RankNet over subset pairs, weighted by label difference.

    ``pred``, ``target``: ``(n_dev, n_subsets)``. For every dev example and every ordered pair
    of subsets ``(a, b)`` with ``Δ = target_a − target_b ≥ t_min``, the loss is
    ``BCEWithLogits(pred_a − pred_b, 1)`` weighted by ``min(Δ, t_max)``: pairs whose labels
    barely differ are noise from LLM training and ignored; large differences are clipped so
    outliers do not dominate. Reduced as ``BCEWithLogitsLoss(weight=w)`` reduces: the mean of
    the weighted losses over the pairs considered. Returns 0 (with a gradient path) when no
    pair qualifies.
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must both be (n_dev, n_subsets), got {pred.shape} and {target.shape}")
    delta = target.unsqueeze(2) - target.unsqueeze(1)  # (n_dev, a, b): target_a - target_b
    margin = pred.unsqueeze(2) - pred.unsqueeze(1)  # (n_dev, a, b)
    considered = delta >= t_min
    if not considered.any():
        return pred.sum() * 0.0
    weight = delta[considered].clamp(max=t_max)
    logits = margin[considered]
    return nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), weight=weight)


def pairwise_accuracy(pred: torch.Tensor, target: torch.Tensor, t_min: float = 0.1) -> float:
    """Share of considered pairs (``Δ ≥ t_min``) that ``pred`` orders like ``target``."""
    delta = target.unsqueeze(2) - target.unsqueeze(1)
    margin = pred.unsqueeze(2) - pred.unsqueeze(1)
    considered = delta >= t_min
    if not considered.any():
        return float("nan")
    return float((margin[considered] > 0).float().mean())
