"""Attribution labels from subset fine-tune losses (paper §3.3)."""

from __future__ import annotations

import numpy as np

CLIP = 10.0


def normalize(losses: np.ndarray) -> np.ndarray:
    """Normalized loss labels for one cross-validation split.

    ``losses``: ``(n_subsets, n_dev)``, the per-example dev loss after fine-tuning on each
    subset. Returns the same shape: ``(mean - loss) / std`` per dev example (column) over
    the subsets, with a zero std treated as 1, clipped to ``[-10, 10]``. Higher means the
    subset helped that dev example more.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError(f"losses must be (n_subsets, n_dev), got shape {losses.shape}")
    if not np.all(np.isfinite(losses)):
        raise ValueError("losses contain NaN or inf; a subset fine-tune diverged and must be rerun")
    mean = losses.mean(axis=0, keepdims=True)
    std = losses.std(axis=0, keepdims=True)  # population std over the subsets
    # A column of equal losses can leave a rounding-error std (~1e-17) that would blow up
    # to ±1 labels; test equality exactly instead and give such columns label 0.
    constant = np.ptp(losses, axis=0, keepdims=True) == 0
    std = np.where(constant, 1.0, std)
    return np.clip(np.where(constant, 0.0, (mean - losses) / std), -CLIP, CLIP)
