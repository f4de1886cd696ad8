"""The fan-out runner is configuration: on CPU, several local workers are separate
processes (a local Dask cluster), one worker runs in the flow's process, and both produce
the same labels."""

from __future__ import annotations

import os

import numpy as np
import pytest
from prefect.settings import PREFECT_API_URL
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from airrep.config import OrchestrationConfig, load_config
from airrep.labels import normalize
from flows.label_generation import label_generation
from flows.runners import local_cluster_kwargs, task_runner
from flows.worker_gpu import gpu_for_worker

pytestmark = pytest.mark.slow  # end to end: scheduled first (conftest)


def test_one_local_worker_runs_in_process_and_more_are_processes(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    one = task_runner(OrchestrationConfig(max_workers=1))
    assert isinstance(one, ThreadPoolTaskRunner) and one._max_workers == 1
    four = task_runner(OrchestrationConfig(max_workers=4))
    assert isinstance(four, DaskTaskRunner)
    kwargs = four.cluster_kwargs
    assert (kwargs["n_workers"], kwargs["threads_per_worker"], kwargs["processes"]) == (4, 1, True)
    assert kwargs["env"]["OMP_NUM_THREADS"] == kwargs["env"]["MKL_NUM_THREADS"] == "2"  # 8 cores / 4 workers
    assert kwargs["env"]["PREFECT_API_URL"] == PREFECT_API_URL.value().rstrip("/")  # this test's API, not their own
    remote = task_runner(OrchestrationConfig(runner="dask", dask_address="tcp://scheduler:8786", max_workers=1))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://scheduler:8786"


def test_worker_processes_match_the_in_process_worker(micro_overrides, tmp_path, published_labels):
    in_process = label_generation(load_config("configs/tiny.yaml", micro_overrides))  # MICRO: max_workers=1
    processes = micro_overrides + [f"storage.uri={tmp_path / 'process-artifacts'}", "orchestration.max_workers=2"]
    on_processes = label_generation(load_config("configs/tiny.yaml", processes))
    assert on_processes["computed"] == 8 and on_processes["skipped"] == 0  # a separate store: all ran again
    # Same subsets, seeds and settings; only the torch threads per process differ, which moves
    # bf16 sums by a few 1e-3 nats, an order below the spread between subsets that labels encode.
    for a, b in zip(published_labels(in_process, micro_overrides), published_labels(on_processes, processes),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-2)
        assert np.corrcoef(normalize(a).ravel(), normalize(b).ravel())[0, 1] > 0.9


def test_local_workers_each_get_their_own_gpu():
    """Real worker processes, started with the arguments ``task_runner`` gives a local cluster
    on a machine with GPUs "3" and "5": each worker sees one GPU, three workers share two in turn."""
    from distributed import Client, LocalCluster

    kwargs = local_cluster_kwargs(3, ["3", "5"], {})
    assert local_cluster_kwargs(3, [], {}).get("preload") is None  # CPU: nothing to pin
    with LocalCluster(**kwargs, dashboard_address=None) as cluster, Client(cluster) as client:
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(seen.values()) == ["3", "3", "5"]
    assert gpu_for_worker(4, "GPU-a, GPU-b") == "GPU-a" and gpu_for_worker(0, "") is None
