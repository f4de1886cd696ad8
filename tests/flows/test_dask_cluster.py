"""Label generation on a Dask cluster started on its own, as a user's cluster is: ``dask
scheduler`` and ``dask worker`` processes on 127.0.0.1, which know nothing of the flow but
the S3 credentials in their environment (no ``PREFECT_API_URL``: each task names the flow's
API). The labels equal the in-process runner's bit for bit (every fine-tune on one thread,
as in this process), and a worker SIGKILLed mid-run costs only its in-flight fine-tune."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from distributed import Client
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime
from prefect.settings import PREFECT_API_URL

from airrep.config import load_config
from flows.label_generation import label_generation
from flows.runners import probe_worker
from infra.storage import MARKER_SUFFIX

pytestmark = pytest.mark.slow  # end to end: scheduled first (conftest)
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # for _executing_labels

ROOT = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).parent / "dask"
START_TIMEOUT = 60.0
# What finetune_subset logs on a worker when it trains a subset, and when it finds it published.
TRAINED = re.compile(r"Task run '(finetune-[^']+)' - \S+: [\d.]+ s, \d+ tokens/s")
SKIPPED = re.compile(r"Task run '(finetune-[^']+)' - \S+: already published")


@dataclass
class DaskCluster:
    address: str
    workers: dict[str, subprocess.Popen]  # by worker name
    logs: dict[str, Path]

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def trained(self, name: str) -> list[str]:
        return TRAINED.findall(self.log(name))

    def skipped(self, name: str) -> list[str]:
        return SKIPPED.findall(self.log(name))


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A process in a session of its own, so that teardown can kill it with all its children."""
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[Callable[..., DaskCluster]]:
    """``dask_cluster(n_workers, drop_env=())`` starts a scheduler and ``n_workers`` single-threaded
    workers (no nanny: one process each) with this process's environment less ``drop_env``, and
    waits for them; every process is killed at teardown, whatever the test did."""
    started: list[subprocess.Popen] = []

    def start(n_workers: int, drop_env: tuple[str, ...] = ()) -> DaskCluster:
        folder = Path(tmp_path / f"dask-{len(started)}")
        folder.mkdir()
        # The S3 variables are in os.environ (the s3_env fixture); the workers are not told the
        # Prefect API. One torch thread, as this process has (conftest), so the sums match.
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", *drop_env)}
        env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "info"}
        scheduler_file = folder / "scheduler.json"
        started.append(_start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], folder / "scheduler.log", env))
        deadline = time.monotonic() + START_TIMEOUT
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if started[-1].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dask scheduler did not start:\n{(folder / 'scheduler.log').read_text()}")
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        workers, logs = {}, {}
        for i in range(n_workers):
            name = f"w{i}"
            logs[name] = folder / f"{name}.log"
            workers[name] = _start([str(DASK), "worker", address, "--name", name, "--nthreads", "1", "--no-nanny",
                                    "--host", "127.0.0.1", "--no-dashboard"], logs[name], env)
            started.append(workers[name])
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(n_workers, timeout=START_TIMEOUT)
        return DaskCluster(address, workers, logs)

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _on_cluster(overrides: list[str], cluster: DaskCluster) -> list[str]:
    return overrides + ["orchestration.runner=dask", f"orchestration.dask_address={cluster.address}"]


def _local_reference(overrides: list[str], s3_env: str) -> list[str]:
    """The same run on the in-process runner (MICRO: one worker), in a store of its own."""
    return [o for o in overrides if not o.startswith("orchestration.")] + [
        "orchestration.max_workers=1", "orchestration.task_retry_delay_seconds=0",
        f"storage.uri={s3_env.rsplit('/', 1)[0]}/local-runner"]


def _finetune_markers(s3_uri: str) -> dict[str, bytes]:
    """The published fine-tunes' completion markers (each names its payload's sha256 and the
    second it was published), read straight from S3."""
    import boto3

    bucket = urllib.parse.urlparse(s3_uri).netloc
    client = boto3.client("s3")
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in _finetune_keys(s3_uri)}


def _finetune_task_runs(since) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_="finetune-split"), start_time=TaskRunFilterStartTime(after_=since)))


def _temporary_api_env(prefect_home: Path) -> dict[str, str]:
    """A flow process's environment without ``PREFECT_API_URL``: it runs on a temporary Prefect
    API server, whose database is ``prefect_home``/prefect.db."""
    return {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(prefect_home)}


def _task_run_states(prefect_home: Path) -> dict[str, str]:
    """The fine-tunes' task runs in the database of a temporary API (:func:`_temporary_api_env`)."""
    with closing(sqlite3.connect(prefect_home / "prefect.db")) as database:
        return dict(database.execute("SELECT name, state_type FROM task_run WHERE name LIKE 'finetune-split%'"))


def _executing_labels(dask_worker) -> list[str]:
    """Run on a worker (sent by value: the workers cannot import the tests): the fine-tunes it
    is executing now, by their Prefect task's ``label``."""
    labels = []
    for ts in dask_worker.state.tasks.values():
        if ts.state == "executing":
            labels.append(ts.run_spec.kwargs["parameters"]["label"])
    return labels


def _finetune_keys(s3_uri: str) -> set[str]:
    """The published fine-tunes' markers, listed (not read): cheap enough to poll."""
    import boto3

    parsed = urllib.parse.urlparse(s3_uri)
    prefix = parsed.path.strip("/") + "/finetunes/"
    listing = boto3.client("s3").list_objects_v2(Bucket=parsed.netloc, Prefix=prefix)
    return {item["Key"] for item in listing.get("Contents", []) if item["Key"].endswith(MARKER_SUFFIX)}


def _kill_a_worker_mid_finetune(cluster: DaskCluster, run: subprocess.Popen, s3_uri: str,
                                log_path: Path) -> tuple[str, str]:
    """Once a fine-tune is published, SIGKILL the first worker seen starting another one (its
    first poll after the start, a fraction of the seconds a fine-tune takes); returns that
    worker's name and the fine-tune it was running."""
    deadline = time.monotonic() + 300
    with Client(cluster.address, timeout="30s") as client:
        names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
        seen: dict[str, list[str]] = {}
        while True:
            if run.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no second fine-tune started while the run lasted:\n{log_path.read_text()[-3000:]}")
            published = bool(_finetune_keys(s3_uri))
            executing = client.run(_executing_labels)
            for address, labels in executing.items():
                started = [label for label in labels if label not in seen.get(address, [])]
                if published and started and seen:
                    victim = cluster.workers[names[address]]
                    os.killpg(victim.pid, signal.SIGKILL)
                    victim.wait(timeout=30)
                    return names[address], f"finetune-{started[0]}"
            seen = executing
            time.sleep(0.05)


def test_labels_on_a_separately_started_cluster_equal_the_local_runner_and_survive_a_killed_worker(
        micro_overrides, s3_env, dask_cluster, published_labels, tmp_path):
    """Two runs on one cluster, each with its labels equal to the in-process runner's.

    First from this process, on its Prefect API: both workers fine-tune, each subset once,
    and the task runs are in this API (no worker starts a temporary server of its own).

    Then ``airrep labels`` as a user first runs it, into a store of its own, on a temporary
    Prefect API (no ``PREFECT_API_URL``), which the tasks name to the workers: the same
    workers now report to that API, not to the first. One worker is SIGKILLed while it
    fine-tunes; the scheduler gives that fine-tune to the surviving worker, and what was
    published stays as it was (not trained again)."""
    cluster = dask_cluster(2)
    micro = micro_overrides + ["sampling.n_splits=1"]  # 4 fine-tunes: two for each worker
    local = _local_reference(micro, s3_env)
    in_process = published_labels(label_generation(load_config("configs/tiny.yaml", local)), local)

    overrides = _on_cluster(micro, cluster)
    since = datetime.now(UTC)
    started = time.monotonic()
    on_cluster = label_generation(load_config("configs/tiny.yaml", overrides))
    seconds = time.monotonic() - started
    assert (on_cluster["computed"], on_cluster["skipped"]) == (4, 0)
    trained = {name: cluster.trained(name) for name in cluster.workers}
    assert all(trained.values()), trained  # both workers fine-tuned
    assert sorted(sum(trained.values(), [])) == sorted(set(sum(trained.values(), [])))  # each subset once
    runs = _finetune_task_runs(since)
    assert sorted(r.name for r in runs if r.state.is_completed()) == sorted(sum(trained.values(), []))
    for a, b in zip(published_labels(on_cluster, overrides), in_process, strict=True):
        np.testing.assert_array_equal(a, b)

    # The second run: a store of its own, so every fine-tune is new work again.
    second_store = f"{s3_env.rsplit('/', 1)[0]}/second-run"
    overrides = overrides + [f"storage.uri={second_store}"]
    log_path = tmp_path / "labels.log"
    run = _start(_labels_command(overrides), log_path, _temporary_api_env(tmp_path / "prefect"))
    try:
        victim, in_flight = _kill_a_worker_mid_finetune(cluster, run, second_store, log_path)
        published_before = _finetune_markers(second_store)
        run.wait(timeout=300)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    output = log_path.read_text()
    assert run.returncode == 0, output[-3000:]
    (survivor,) = set(cluster.workers) - {victim}
    # What each worker trained in this run: its log after the first run's entries.
    by_victim, by_survivor = (cluster.trained(name)[len(trained[name]):] for name in (victim, survivor))
    assert in_flight not in by_victim and in_flight in by_survivor  # rescheduled, and trained there
    assert sorted(by_victim + by_survivor) == sorted(set(by_victim + by_survivor))  # none trained twice
    assert len(by_victim + by_survivor) == 4 and by_victim  # each subset trained once, some before the kill
    published_after = _finetune_markers(second_store)
    assert published_before and all(published_after[k] == v for k, v in published_before.items())  # untouched
    # The workers reported to the run's temporary server (its database holds their task runs), not to the
    # first run's API, and not to one of their own.
    assert _task_run_states(tmp_path / "prefect") == dict.fromkeys(by_victim + by_survivor, "COMPLETED")
    assert len(_finetune_task_runs(since)) == len(runs)
    assert not any("temporary server" in cluster.log(name) for name in cluster.workers)
    computed, skipped = map(int, re.search(r"fine-tunes: (\d+) run now, (\d+) already", output).groups())
    assert computed + skipped == 4

    label_keys = re.search(r"labels published at:\n((?:  \S+\n?)+)", output).group(1).split()
    for a, b in zip(published_labels({"label_keys": label_keys}, overrides), in_process, strict=True):
        np.testing.assert_array_equal(a, b)
    shares = ", ".join(f"{name}: {len(labels)}" for name, labels in trained.items())
    print(f"dask cluster: 4 fine-tunes in {seconds:.1f} s on 2 workers ({shares}), labels equal to the "
          f"in-process runner's. Second run, on its own API: {victim} SIGKILLed during {in_flight} with "
          f"{len(published_before)}/4 published; {survivor} trained it, {len(by_survivor)} in all; the run reported "
          f"{computed} run, {skipped} skipped; labels equal to the in-process runner's")


def _labels_command(overrides: list[str]) -> list[str]:
    command = [sys.executable, "-m", "flows.cli", "labels", "-c", "configs/tiny.yaml"]
    for override in overrides:
        command += ["--set", override]
    return command


def test_workers_without_the_store_credentials_stop_the_run_with_one_line(micro_overrides, s3_env, dask_cluster,
                                                                          tmp_path):
    """A user's workers take the store's credentials from their own environment. Started
    without them, the run stops before any fine-tune, saying which worker lacks what."""
    cluster = dask_cluster(1, drop_env=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    log_path = tmp_path / "labels.log"
    run = _start(_labels_command(_on_cluster(micro_overrides, cluster)), log_path,
                 {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})
    try:
        run.wait(timeout=300)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    output = log_path.read_text()
    assert run.returncode == 2, output[-3000:]
    (line,) = [line for line in output.splitlines() if line.startswith("airrep: ")]
    assert line.startswith(f"airrep: Dask worker {cluster.address.rsplit(':', 1)[0]}:")
    assert "cannot read the artifact store" in line and "no S3 credentials" in line
    assert "set for the flow but not on this worker: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in line
    assert not cluster.trained("w0") and not _finetune_keys(s3_env)
    print(f"worker without credentials: {line}")


def test_a_worker_that_cannot_reach_the_flows_api_is_told_to_set_prefect_api_url(s3_env):
    """The check a worker runs, against an address where nothing listens."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    problem = probe_worker(f"http://127.0.0.1:{port}/api", True, s3_env, "index/none.json", [])
    assert problem.startswith(f"cannot reach the flow's Prefect API at http://127.0.0.1:{port}/api, the run's "
                              "temporary server")
    assert "set PREFECT_API_URL" in problem
    # Reachable API, store readable, but not the flow's: its artifact is not there.
    problem = probe_worker(PREFECT_API_URL.value().rstrip("/"), False, s3_env, "index/none.json", [])
    assert problem.startswith("does not see index/none.json in the artifact store")
