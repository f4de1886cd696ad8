"""The fan-out task runner is configuration (``orchestration`` section), not code.

- ``local``: this machine. With one worker (the default with one GPU, or ``max_workers: 1``)
  the fine-tunes run one after another in the flow's own process, with all of torch's
  threads. With more (the default: one per GPU, or on CPU one per core) they run in that
  many worker processes of a local Dask cluster started for the fan-out, the cores divided
  among them and each with its own GPU (:mod:`flows.worker_gpu`).
- ``dask``: ``prefect-dask``'s ``DaskTaskRunner`` on an existing cluster (``dask_address``,
  e.g. one GPU per worker), or on a local one as above.

On an existing cluster the workers report their task runs to the flow's Prefect API, which
each task names: Prefect sends the flow's settings with every task it submits, and they take
precedence over the worker's own. A flow without ``PREFECT_API_URL`` runs on a temporary API
server on 127.0.0.1, which only workers on the same machine can reach; :func:`cluster_ready`
names it in the tasks and checks, before the fan-out, that every worker reaches that API and
reads the artifact store with the credentials of its own environment (docs/cluster.md). It
also points each worker's Prefect events, from which the API records the task runs, at that
API (:func:`send_events_to`): a worker that served an earlier flow still sends them to that
flow's API.

Concurrent fine-tunes never share a process. Torch threads training side by side in one
process ended in segfaults inside the native libraries (four test-suite runs; never
reproduced alone, so never fixed at the source); separate processes also keep the
fine-tunes' Python work from contending for one GIL.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from airrep.config import OrchestrationConfig
from flows.worker_gpu import WORKER_GPUS_ENV, gpu_names

# The environment variables the artifact store reads (infra/storage.py), compared by name only
# between the flow and a worker that cannot read the store; values never leave either process.
STORE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
             "AWS_DEFAULT_REGION", "AWS_PROFILE")
CLUSTER_DOCS = "docs/cluster.md"


class ClusterError(RuntimeError):
    """An existing Dask cluster cannot run the fan-out; the message names the worker and what to set."""


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
    return {"PREFECT_API_URL": flow_api_url()}


def flow_api_url() -> str:
    """The Prefect API this process reports to: ``PREFECT_API_URL``, or the temporary server's."""
    from prefect.client.orchestration import get_client

    return str(get_client(sync_client=True).api_url).rstrip("/")


@contextmanager
def cluster_ready(config: dict[str, Any], probe_key: str) -> Iterator[None]:
    """Submit the fan-out's tasks inside this. On an existing cluster (``dask_address``) it
    first checks every worker (:func:`check_workers`, ``probe_key`` being an artifact already
    published) and points its Prefect events at this flow's API (:func:`send_events_to`), then
    names this flow's API in the settings each task carries: without ``PREFECT_API_URL`` those
    would name no API, and a worker would start a temporary server of its own and record the
    task runs there. Elsewhere it does nothing."""
    orchestration = OrchestrationConfig.model_validate(config["orchestration"])
    if not (orchestration.runner == "dask" and orchestration.dask_address):
        yield
        return
    api_url = flow_api_url()
    check_workers(orchestration.dask_address, api_url, config["storage"]["uri"], probe_key)
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield


def check_workers(address: str, api_url: str, store_uri: str, probe_key: str) -> None:
    """Raise :class:`ClusterError` unless every worker of the cluster at ``address`` reaches
    ``api_url`` and sees ``probe_key`` in the store at ``store_uri``: a worker that cannot would
    fail each fine-tune it is given, or (without the API) silently report it elsewhere. When
    all do, their Prefect events go to ``api_url`` from then on (:func:`send_events_to`)."""
    from distributed import Client

    try:
        client = Client(address, timeout="30s", set_as_default=False)
    except OSError as exc:
        raise ClusterError(f"cannot connect to the Dask scheduler at {address} ({exc}); check "
                           "orchestration.dask_address and that the scheduler is reachable from here") from exc
    with client:
        flow_env = [name for name in STORE_ENV if os.environ.get(name)]
        try:
            problems = client.run(probe_worker, api_url, not PREFECT_API_URL.value(), store_uri, probe_key,
                                  flow_env)
        except ImportError as exc:
            raise ClusterError(f"the workers of the Dask cluster at {address} cannot import this pipeline ({exc}): "
                               "start them from the worker image or an environment with airrep installed") from exc
        if not any(problems.values()):
            client.run(send_events_to, api_url)
    if not problems:
        get_run_logger().warning("no workers at %s yet: the fine-tunes wait for them", address)
    for worker, problem in sorted(problems.items()):
        if problem:
            raise ClusterError(f"Dask worker {worker} {problem} (see {CLUSTER_DOCS})")


# Where this process's Prefect events go, as send_events_to last set it (on a worker).
_events_api_url: str | None = None


async def send_events_to(api_url: str) -> None:
    """Run on a worker before a flow's tasks: send this process's Prefect events to ``api_url``.

    The API records task runs from the events the task engine emits, and Prefect keeps one
    event stream per process to a self-hosted API (``EventsWorker``, unlike its log stream,
    one per API): opened to the API named by the first task the process ran, and kept for
    every later task whatever API that names. A long-lived worker would so record a later
    flow's task runs in the first flow's API (or lose them, that API gone). Stopping the
    stream, once it has sent what it holds, lets the next task open one to its own API. Two
    flows at once on different APIs still cannot share a worker: one stream serves both.
    """
    global _events_api_url
    if api_url != _events_api_url:
        from prefect.events.worker import EventsWorker

        await EventsWorker.drain_all(timeout=30, at_exit=False)  # awaitable: run in the worker's event loop
        _events_api_url = api_url


def probe_worker(api_url: str, temporary_api: bool, store_uri: str, probe_key: str,
                 flow_env: Sequence[str]) -> str | None:
    """Run on a worker: what keeps it from running fine-tunes for this flow, or None."""
    from infra.storage import open_store

    try:
        urllib.request.urlopen(f"{api_url}/health", timeout=10).close()
    except urllib.error.HTTPError:
        pass  # any HTTP answer: the API is reachable
    except OSError as exc:
        where = ", the run's temporary server on the flow's machine," if temporary_api else ""
        return (f"cannot reach the flow's Prefect API at {api_url}{where} ({exc}): set PREFECT_API_URL, for the "
                "flow, to a Prefect server that the workers reach at the same address")
    try:
        found = open_store(store_uri, max_attempts=2).exists(probe_key)
    except Exception as exc:  # any failure here is the message the user needs
        missing = [name for name in flow_env if not os.environ.get(name)]
        unset = f"; set for the flow but not on this worker: {', '.join(missing)}" if missing else ""
        return (f"cannot read the artifact store {store_uri} ({exc}{unset}): start the workers with the store's "
                "credentials and endpoint in their environment")
    if not found:
        return (f"does not see {probe_key} in the artifact store {store_uri}, which this flow published: the "
                "workers need the flow's store (an s3:// storage.uri, or a path every machine shares)")
    return None


def torch_threads_per_worker(workers: int) -> int:
    """Intra-op threads for each of ``workers`` worker processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // workers)
