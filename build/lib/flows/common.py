"""What every flow shares: the run's config as the plain dict that tasks receive, and its
orchestration settings."""

from __future__ import annotations

from typing import Any

from airrep.config import OrchestrationConfig, load_config


def config_dict(config_path: str, overrides: list[str] | None) -> dict[str, Any]:
    """The validated config as JSON-ready data (a task parameter Prefect can store and show)."""
    return load_config(config_path, overrides or []).model_dump(mode="json")


def orchestration(config: dict[str, Any]) -> OrchestrationConfig:
    return OrchestrationConfig.model_validate(config["orchestration"])
