"""Dask worker preload that gives each worker process of a local cluster its own GPU.

A local Dask cluster's workers inherit the flow's environment, so on a machine with several
GPUs every worker's fine-tunes would land on ``cuda:0``. :func:`flows.runners.task_runner`
lists the GPUs in ``AIRREP_WORKER_GPUS`` and names this module as the workers' preload;
each worker then sees only the GPU at its index (``CUDA_VISIBLE_DEVICES``), set at start-up
before anything in the process initialises CUDA. More workers than GPUs share them in turn.
"""

from __future__ import annotations

import os

WORKER_GPUS_ENV = "AIRREP_WORKER_GPUS"


def gpu_names(listing: str) -> list[str]:
    """The GPU ids or UUIDs in a comma-separated list such as ``CUDA_VISIBLE_DEVICES``."""
    return [gpu.strip() for gpu in listing.split(",") if gpu.strip()]


def gpu_for_worker(index: int, gpus: str) -> str | None:
    """The GPU (an id or UUID from ``gpus``, comma-separated) for the worker at ``index``."""
    listed = gpu_names(gpus)
    return listed[index % len(listed)] if listed else None


def dask_setup(worker) -> None:
    """Dask calls this in each worker process as it starts; a local cluster names its
    workers 0, 1, … in order."""
    gpu = gpu_for_worker(int(worker.name), os.environ.get(WORKER_GPUS_ENV, ""))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
