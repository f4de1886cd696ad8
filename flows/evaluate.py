"""Evaluate a saved AirRep directory on the config's benchmark, without registering it."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import ConfigParameter, config_data, run_config
from flows.train_evaluate_promote import benchmark_losses
from tasks.common import store_for, typed
from tasks.labels import prepare_base_llm, sample_splits
from tasks.model import evaluate_task


@flow(name="evaluate", log_prints=True)
def evaluate_model(config: ConfigParameter = None, model_path: str = "") -> dict[str, Any]:
    """LDS table for the AirRep at ``model_path`` and every configured baseline."""
    from airrep.keys import evaluated_model_key
    from airrep.llm import fingerprint

    config = config_data(run_config(config))
    index = sample_splits(config)
    llm = prepare_base_llm(config, index["key"])
    loss_keys, repeat_keys, _ = benchmark_losses(config, index["key"], llm)
    model_key = evaluated_model_key(fingerprint(model_path))
    store = store_for(typed(config))
    if not store.exists(model_key):
        store.put_dir(model_key, model_path)
    return evaluate_task(config, index["key"], llm, model_key, loss_keys, repeat_keys)
