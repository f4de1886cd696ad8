"""A label-generation run SIGKILLed midway loses no finished fine-tune: the re-run computes
exactly the missing ones, and its labels equal those of a run that was never interrupted. A
SIGTERMed run stops within seconds, exits as failed, and loses nothing either."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch

from airrep.config import load_config
from flows.label_generation import label_generation
from infra.storage import MARKER_SUFFIX

pytestmark = pytest.mark.slow  # end to end: scheduled first (conftest)

ROOT = Path(__file__).resolve().parents[2]
N_SUBSETS = 6  # per split; 2 splits -> 12 fine-tunes
KILL_AFTER = 4


def _published_finetunes(s3_uri: str, raw_bucket) -> set[str]:
    prefix = urllib.parse.urlparse(s3_uri).path.strip("/") + "/finetunes/"
    return {k for k in raw_bucket(s3_uri) if k.startswith(prefix) and k.endswith(MARKER_SUFFIX)}


def _start_labels_run(overrides: list[str], log_path: Path, prefect_home: Path | None = None) -> subprocess.Popen:
    """``airrep labels`` in its own process (and session): against the test's Prefect API, or
    with ``prefect_home`` on a temporary API server of its own, as ``make run`` does."""
    from prefect.settings import PREFECT_API_URL

    command = [sys.executable, "-m", "flows.cli", "labels", "-c", "configs/tiny.yaml"]
    for override in overrides:
        command += ["--set", override]
    # The same torch threads as this process (see conftest), so its fine-tunes sum in the same order.
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    if prefect_home is not None:
        env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(prefect_home)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_until_published(process: subprocess.Popen, count: int, s3_env: str, raw_bucket, log_path: Path) -> None:
    deadline = time.monotonic() + 600
    while len(_published_finetunes(s3_env, raw_bucket)) < count:
        if process.poll() is not None:
            pytest.fail(f"the run exited before the kill point:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("no fine-tunes were published within 10 minutes")
        time.sleep(0.05)


def test_sigkill_then_resume_redoes_only_the_missing_finetunes(micro_overrides, s3_env, raw_bucket, tmp_path,
                                                               published_labels):
    overrides = micro_overrides + [f"sampling.n_subsets={N_SUBSETS}"]
    total = 2 * N_SUBSETS
    log_path = tmp_path / "killed-run.log"
    process = _start_labels_run(overrides, log_path)
    _wait_until_published(process, KILL_AFTER, s3_env, raw_bucket, log_path)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    published = len(_published_finetunes(s3_env, raw_bucket))
    assert KILL_AFTER <= published < total

    resumed = label_generation(load_config("configs/tiny.yaml", overrides))
    assert resumed["skipped"] == published
    assert resumed["computed"] == total - published

    fresh = overrides + [f"storage.uri={s3_env.rsplit('/', 1)[0]}/uninterrupted"]
    uninterrupted = label_generation(load_config("configs/tiny.yaml", fresh))
    assert uninterrupted["computed"] == total
    for after_crash, clean in zip(published_labels(resumed, overrides), published_labels(uninterrupted, fresh),
                                    strict=True):
        np.testing.assert_array_equal(after_crash, clean)
    print(f"crash and resume: killed after {published}/{total} published, re-run computed "
          f"{resumed['computed']}, labels equal to an uninterrupted run")


def test_sigterm_stops_soon_with_a_failing_exit_code_and_keeps_finished_work(micro_overrides, s3_env, raw_bucket,
                                                                             tmp_path):
    """What a supervisor (systemd, Kubernetes, a work pool's worker) sends first: the run
    stops once its in-flight fine-tunes finish, exits with status 143 (so the supervisor sees
    a failure, not success), leaves no process behind (its temporary Prefect API server
    included), and the re-run computes only what is missing."""
    overrides = micro_overrides + [f"sampling.n_subsets={N_SUBSETS}"]
    total = 2 * N_SUBSETS
    log_path = tmp_path / "terminated-run.log"
    # A home whose parent is missing too, as ``.work/prefect`` is on a fresh clone.
    process = _start_labels_run(overrides, log_path, prefect_home=tmp_path / "fresh-clone" / ".work" / "prefect")
    _wait_until_published(process, 2, s3_env, raw_bucket, log_path)
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"still running 120 s after SIGTERM:\n{log_path.read_text()[-3000:]}")
    stopped_after = time.monotonic() - sent
    assert process.returncode == 128 + signal.SIGTERM, log_path.read_text()[-3000:]
    assert "Crashed" in log_path.read_text()  # the flow run is marked as such in Prefect
    deadline = time.monotonic() + 30  # the API server gets a moment to shut down
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("a process of the terminated run (its temporary Prefect API server?) outlived it")
    published = len(_published_finetunes(s3_env, raw_bucket))
    assert 2 <= published < total

    resumed = label_generation(load_config("configs/tiny.yaml", overrides))
    assert (resumed["skipped"], resumed["computed"]) == (published, total - published)
    print(f"SIGTERM: stopped {stopped_after:.1f} s after the signal with exit status {process.returncode} and "
          "no process left behind, "
          f"{published}/{total} published; the re-run computed {resumed['computed']}")
