"""The whole pipeline, in the order of the paper's figure."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.label_generation import label_generation
from flows.train_evaluate_promote import train_evaluate_promote


@flow(name="pipeline", log_prints=True)
def pipeline(config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """sample → fine-tune subsets → normalize → train → benchmark → evaluate → register/promote."""
    labels = label_generation(config_path, overrides)
    return train_evaluate_promote(config_path, overrides, labels=labels)
