"""Evaluation metrics: LDS (datamodels' linear datamodeling score) and classification."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def lds(pred: np.ndarray, losses: np.ndarray) -> float:
    """Linear datamodeling score.

    ``pred``, ``losses``: ``(n_test, n_subsets)``: a method's group score of every held-out
    subset for every test example, and that example's true loss after fine-tuning on the
    subset. Returns the mean over test examples of the Spearman correlation between
    ``pred[i]`` and ``-losses[i]`` (a constant row's correlation is NaN and counts as 0).
    Vectorised: ranks with ties averaged (scipy), then a row-wise Pearson of the ranks.
    """
    pred = np.asarray(pred, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if pred.shape != losses.shape or pred.ndim != 2:
        raise ValueError(f"pred and losses must both be (n_test, n_subsets), got {pred.shape}, {losses.shape}")
    a = rankdata(pred, axis=1)
    b = rankdata(-losses, axis=1)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (a * b).sum(axis=1) / denom
    return float(np.nan_to_num(rho, nan=0.0).mean())


def classification_accuracy(embeddings: np.ndarray, labels: list[str], folds: int = 5, seed: int = 0) -> float:
    """Task-label accuracy of a logistic-regression probe on embeddings (paper §4.4).

    Stratified k-fold cross-validation (scikit-learn), so every example is scored by a
    probe that never saw it.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, np.asarray(embeddings), np.asarray(labels), cv=splitter).mean())
