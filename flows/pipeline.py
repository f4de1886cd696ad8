"""The whole pipeline, in the order of the paper's figure."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import ConfigParameter, run_config
from flows.label_generation import label_generation
from flows.train_evaluate_promote import train_evaluate_promote


@flow(name="pipeline", log_prints=True)
def pipeline(config: ConfigParameter = None) -> dict[str, Any]:
    """sample → fine-tune subsets → normalize → train → benchmark → evaluate → register/promote."""
    config = run_config(config)
    labels = label_generation(config)
    return train_evaluate_promote(config, labels=labels)
