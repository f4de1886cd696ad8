"""The fan-out task runner is configuration (``orchestration`` section), not code.

- ``local``: a thread pool on this machine (one single-threaded worker per core on CPU,
  one worker on a GPU); torch's intra-op threads are divided among the workers so they do
  not oversubscribe the CPU.
- ``dask``: ``prefect-dask``'s ``DaskTaskRunner``, on an existing cluster
  (``dask_address``, e.g. one GPU per worker) or a local one started for the run.
"""

from __future__ import annotations

import os

import torch
from prefect.task_runners import ThreadPoolTaskRunner

from airrep.config import OrchestrationConfig


def default_workers() -> int:
    """CPU: one single-threaded worker per core (measured here: two 1-thread fine-tunes at
    once finish 1.5x sooner than one 2-thread fine-tune at a time, for small LMs). GPU: one
    worker, the device; more GPUs fan out through Dask, one GPU per worker process."""
    if torch.cuda.is_available():
        return 1
    return max(1, os.cpu_count() or 1)


def task_runner(config: OrchestrationConfig):
    if config.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        workers = config.max_workers or default_workers()
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "processes": True})
    return ThreadPoolTaskRunner(max_workers=config.max_workers or default_workers())


def torch_threads_per_worker(config: OrchestrationConfig) -> int:
    """Intra-op threads for each concurrent fine-tune of the local runner."""
    return max(1, (os.cpu_count() or 1) // (config.max_workers or default_workers()))
