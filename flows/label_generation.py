"""Stages 1–3 of the pipeline: sample splits → fine-tune every subset → normalize labels."""

from __future__ import annotations

from typing import Any

from prefect import flow

from airrep.config import FinetuneConfig
from airrep.plan import label_keys
from flows.common import ConfigParameter, config_data, orchestration, run_config
from flows.fanout import finetune_subsets
from flows.runners import task_runner
from tasks.labels import load_index, normalize_labels, prepare_base_llm, sample_splits


@flow(name="label-generation", log_prints=True)
def label_generation(config: ConfigParameter = None) -> dict[str, Any]:
    """Generate attribution labels; returns the keys of everything it published."""
    config = config_data(run_config(config))
    index = sample_splits(config)
    llm = prepare_base_llm(config, index["key"])
    split_index = load_index(config, index["key"])
    fan_out = finetune_subsets.with_options(task_runner=task_runner(orchestration(config)))
    results = fan_out(config, llm, index["key"], "labels", "label generation")
    targets = label_keys(split_index, index["key"], FinetuneConfig.model_validate(config["finetune"]),
                         llm["fingerprint"])
    published, position = [], 0
    for split, target in zip(split_index.splits, targets, strict=True):
        keys = [r["key"] for r in results[position : position + len(split.subsets)]]
        position += len(split.subsets)
        published.append(normalize_labels(config, split.dev, keys, target))
    return {"index": index, "llm": llm, "label_keys": published,
            "computed": sum(not r["skipped"] for r in results), "skipped": sum(r["skipped"] for r in results)}

