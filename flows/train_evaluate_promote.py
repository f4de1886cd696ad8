"""Stages 4–6: train AirRep → build the benchmark → evaluate by LDS → register and promote."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import ConfigParameter, config_data, orchestration, run_config
from flows.fanout import finetune_subsets
from flows.label_generation import label_generation
from flows.runners import task_runner
from tasks.labels import load_index
from tasks.model import benchmark_fingerprint, evaluate_task, register_and_promote, train_airrep_task


def benchmark_losses(config: dict[str, Any], index_key: str,
                     llm: dict[str, str]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Fine-tune every held-out benchmark subset (twice when the noise ceiling is on, with
    independent seeds); returns the published loss keys of both runs and all results."""
    bench = load_index(config, index_key).benchmark
    fan_out = finetune_subsets.with_options(task_runner=task_runner(orchestration(config)))
    results = fan_out(config, llm, index_key, "benchmark", "benchmark")
    keys = [r["key"] for r in results]
    n = len(bench.subsets)
    return keys[:n], keys[n:], results


@flow(name="train-evaluate-promote", log_prints=True)
def train_evaluate_promote(config: ConfigParameter = None, labels: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and evaluate AirRep on published labels (generated first if not given)."""
    typed_config = run_config(config)
    labels = labels or label_generation(typed_config)
    config = config_data(typed_config)
    index_key, llm = labels["index"]["key"], labels["llm"]
    model = train_airrep_task(config, index_key, labels["label_keys"])
    loss_keys, repeat_keys, bench_results = benchmark_losses(config, index_key, llm)
    evaluation = evaluate_task(config, index_key, llm, model["key"], loss_keys, repeat_keys)
    bench_fp = benchmark_fingerprint(llm["fingerprint"], index_key, config)
    registry = register_and_promote(config, index_key, llm, model["key"], model["curve"], evaluation,
                                    labels["index"]["corpus_fingerprint"], bench_fp)
    skipped = labels.get("skipped", 0) + sum(r["skipped"] for r in bench_results)
    computed = labels.get("computed", 0) + sum(not r["skipped"] for r in bench_results)
    return {"model": model, "evaluation": evaluation, "registry": registry, "benchmark_fingerprint": bench_fp,
            "finetunes_computed": computed, "finetunes_skipped": skipped, "llm": llm, "index_key": index_key,
            "label_keys": labels["label_keys"], "loss_keys": loss_keys, "repeat_keys": repeat_keys}
