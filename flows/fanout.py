"""Fan subset fine-tunes out over the configured task runner, with visible progress."""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.logging import get_run_logger

from flows.runners import cluster_ready
from tasks.labels import finetune_subset, subset_jobs

# The progress artifact is updated at most this often (and once at the end). Each update is
# a round trip to the API from the loop that collects results: once per fine-tune, it held
# a 200-job resume to one result per API round trip (0.1-0.5 s on a busy server; see
# benchmarks/ORCHESTRATION.md).
PROGRESS_INTERVAL_SECONDS = 5.0


@flow(name="finetune-subsets", log_prints=True)
def finetune_subsets(config: dict[str, Any], llm: dict[str, str], index_key: str,
                     stage: Literal["labels", "benchmark"], description: str) -> list[dict[str, Any]]:
    """Fine-tune every subset of ``stage`` in the published index; results in job order
    (see :func:`airrep.plan.stage_jobs`).

    The jobs are built here from the index key, not passed in: a flow run's parameters are
    stored by the Prefect API (at most 512 KB), and the member ids of thousands of subsets
    are far larger. Retries and the timeout come from ``orchestration``; a job whose result
    is already published is skipped inside the task, so a re-run redoes only what is missing.
    On an existing Dask cluster the workers are checked first (:func:`flows.runners.cluster_ready`).
    """
    logger = get_run_logger()
    jobs = subset_jobs(config, index_key, llm["fingerprint"], stage)
    orch = config["orchestration"]
    task = finetune_subset.with_options(retries=orch["task_retries"],
                                        retry_delay_seconds=orch["task_retry_delay_seconds"],
                                        timeout_seconds=orch["finetune_timeout_seconds"])
    progress_id = create_progress_artifact(progress=0.0, description=f"{description}: 0/{len(jobs)}")
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    with cluster_ready(config, index_key):
        futures = {task.submit(config, llm, job.key, job.members, job.eval_ids, job.seed, job.label): i
                   for i, job in enumerate(jobs)}
    last_update = time.monotonic()
    for done, future in enumerate(as_completed(list(futures)), start=1):
        results[futures[future]] = future.result()
        if done == len(jobs) or time.monotonic() - last_update >= PROGRESS_INTERVAL_SECONDS:
            update_progress_artifact(progress_id, progress=100.0 * done / len(jobs),
                                     description=f"{description}: {done}/{len(jobs)}")
            last_update = time.monotonic()
    skipped = sum(r["skipped"] for r in results)
    logger.info("%s: %d fine-tunes run, %d already published and skipped", description,
                len(jobs) - skipped, skipped)
    return results
