"""What every flow shares: the run's typed config, the plain dict that tasks receive, and its
orchestration settings."""

from __future__ import annotations

from typing import Any

from airrep.config import OrchestrationConfig, PipelineConfig, load_config

# A flow's one config parameter. Typed, so Prefect validates it and its UI shows the run's
# settings as a form (every field's description included); None, a deployment run without
# parameters: the packaged `tiny` config with the worker's AIRREP__ environment overrides.
ConfigParameter = PipelineConfig | None


def run_config(config: ConfigParameter) -> PipelineConfig:
    """The config a flow runs with: the one it was given (already final: its environment and
    overrides were applied where it was built), or the packaged ``tiny`` config."""
    return load_config("tiny") if config is None else config


def config_data(config: PipelineConfig) -> dict[str, Any]:
    """The config as JSON-ready data: what tasks receive (Prefect stores and shows it, and it
    crosses to Dask workers as plain data)."""
    return config.model_dump(mode="json")


def orchestration(config: dict[str, Any]) -> OrchestrationConfig:
    return OrchestrationConfig.model_validate(config["orchestration"])
