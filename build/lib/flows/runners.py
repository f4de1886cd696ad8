"""The fan-out task runner is configuration (``orchestration`` section), not code.

- ``local``: this machine. With one worker (the default with one GPU, or ``max_workers: 1``)
  the fine-tunes run one after another in the flow's own process, with all of torch's
  threads. With more (the default: one per GPU, or on CPU one per core) they run in that
  many worker processes of a local Dask cluster started for the fan-out, the cores divided
  among them and each with its own GPU (:mod:`flows.worker_gpu`).
- ``dask``: ``prefect-dask``'s ``DaskTaskRunner`` on an existing cluster (``dask_address``,
  e.g. one GPU per worker), or on a local one as above.

Concurrent fine-tunes never share a process. Torch threads training side by side in one
process ended in segfaults inside the native libraries (four test-suite runs; never
reproduced alone, so never fixed at the source); separate processes also keep the
fine-tunes' Python work from contending for one GIL.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from prefect.task_runners import ThreadPoolTaskRunner

from airrep.config import OrchestrationConfig
from flows.worker_gpu import WORKER_GPUS_ENV, gpu_names


def visible_gpus() -> list[str]:
    """The GPUs this process may use, named as ``CUDA_VISIBLE_DEVICES`` names them (ids or
    UUIDs), so a worker given one of these names sees that same device."""
    if not torch.cuda.is_available():
        return []
    listed = gpu_names(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    count = torch.cuda.device_count()
    return listed[:count] if listed else [str(i) for i in range(count)]


def default_workers() -> int:
    """CPU: one single-threaded worker per core (measured here: two 1-thread fine-tunes at
    once finish 1.5x sooner than one 2-thread fine-tune at a time, for small LMs). GPUs:
    one worker per GPU, each pinned to its own."""
    return len(visible_gpus()) or max(1, os.cpu_count() or 1)


def task_runner(config: OrchestrationConfig):
    workers = config.max_workers or default_workers()
    if config.runner == "local" and workers == 1:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if config.runner == "dask" and config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    return DaskTaskRunner(cluster_kwargs=local_cluster_kwargs(workers, visible_gpus(), prefect_api_env()))


def local_cluster_kwargs(workers: int, gpus: Sequence[str], env: dict[str, str]) -> dict:
    """``distributed.LocalCluster`` arguments: ``workers`` single-task worker processes with
    their share of the cores and, when there are ``gpus``, one of them each."""
    threads = str(torch_threads_per_worker(workers))
    # Dask starts workers with 1 OpenMP/MKL thread; give each its share of the cores.
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **env}
    kwargs: dict = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "env": env}
    if gpus:
        env[WORKER_GPUS_ENV] = ",".join(gpus)
        kwargs["preload"] = ["flows.worker_gpu"]
    return kwargs


def prefect_api_env() -> dict[str, str]:
    """Where worker processes report their task runs: the API this flow talks to. Without
    ``PREFECT_API_URL`` that is the run's temporary local server, and each worker would
    otherwise start one of its own on the same database (which then locks)."""
    from prefect.client.orchestration import get_client

    return {"PREFECT_API_URL": str(get_client(sync_client=True).api_url).rstrip("/")}


def torch_threads_per_worker(workers: int) -> int:
    """Intra-op threads for each of ``workers`` worker processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // workers)
