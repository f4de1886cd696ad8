"""A label-generation run SIGKILLed midway loses no finished fine-tune: the re-run computes
exactly the missing ones, and its labels equal those of a run that was never interrupted. A
run SIGTERMed in the middle of a fine-tune far longer than its stop grace stops within the
grace, exits as failed, with every process it started, and loses nothing either."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil
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


def _start_labels_run(overrides: list[str], log_path: Path, prefect_home: Path | None = None,
                      cli_args: Sequence[str] = ()) -> subprocess.Popen:
    """``airrep labels`` in its own process (and session): against the test's Prefect API, or
    with ``prefect_home`` on a temporary API server of its own, as ``make run`` does."""
    from prefect.settings import PREFECT_API_URL

    command = [sys.executable, "-m", "flows.cli", *cli_args, "labels", "-c", "configs/tiny.yaml"]
    for override in overrides:
        command += ["--set", override]
    # The same torch threads as this process (see conftest), so its fine-tunes sum in the same order.
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    if prefect_home is not None:
        env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(prefect_home)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


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


LONG_FINETUNE_EPOCHS = 300  # one micro subset fine-tune: about 75 s on one thread here
STOP_GRACE = 5.0
STOP_MARGIN = 10.0  # the supervisor's reaction and the kill, on 2 busy cores


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# How a supervisor signals: Kubernetes and systemd send SIGTERM to the main process alone;
# ``timeout`` and a terminal's Ctrl-C reach the whole process group, the temporary Prefect API
# server included.
STOP_CASES = [
    pytest.param(1, False, id="finetune-in-flow-process-signal-to-the-process"),
    pytest.param(2, True, id="finetune-in-dask-workers-signal-to-the-group"),
]


@pytest.mark.parametrize(("workers", "to_group"), STOP_CASES)
def test_sigterm_during_a_long_finetune_stops_within_the_grace_period(micro_overrides, s3_env, raw_bucket,
                                                                       tmp_path, workers, to_group):
    """A fine-tune of a large LLM takes minutes, longer than any supervisor waits. SIGTERM in
    the middle of one, sent to the run's process or to its whole process group: the run
    still stops within the stop grace (``--stop-grace``) with status 143 (a supervisor sees a
    failure, not success), no process it started survives it
    (API server, Dask workers), and what was published before the signal is still there,
    unchanged (a re-run skips it: test_sigkill_then_resume_redoes_only_the_missing_finetunes).
    The Prefect home's parent is missing too, as ``.work/prefect`` is on a fresh clone."""
    overrides = micro_overrides + [f"finetune.epochs={LONG_FINETUNE_EPOCHS}", f"orchestration.max_workers={workers}"]
    log_path = tmp_path / "terminated-run.log"
    process = _start_labels_run(overrides, log_path, prefect_home=tmp_path / "fresh-clone" / ".work" / "prefect",
                                cli_args=["--stop-grace", str(STOP_GRACE)])
    deadline = time.monotonic() + 300
    while "Loading weights" not in log_path.read_text(errors="replace"):  # a fine-tune has started
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no fine-tune started:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    time.sleep(3)  # into its training steps
    started = _descendants(process.pid)
    published = raw_bucket(s3_env)
    if to_group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        process.wait(timeout=STOP_GRACE + STOP_MARGIN)
    except subprocess.TimeoutExpired:
        for leftover in [process.pid, *(p.pid for p in started)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
        pytest.fail(f"still running {STOP_GRACE + STOP_MARGIN:.0f} s after SIGTERM:\n{log_path.read_text()[-3000:]}")
    stopped_after = time.monotonic() - sent
    assert process.returncode == 128 + signal.SIGTERM, log_path.read_text()[-3000:]
    time.sleep(1)  # SIGKILLed processes are gone within moments
    survivors = [p for p in started if _alive(p)]
    for survivor in survivors:
        survivor.kill()
    assert not survivors, f"outlived the run: {[' '.join(p.cmdline()[:4]) for p in survivors]}"
    after = raw_bucket(s3_env)
    assert {key: after.get(key) for key in published} == published
    assert any(key.endswith(MARKER_SUFFIX) for key in published)  # the index and the base LLM at least
    print(f"SIGTERM to the {'group' if to_group else 'process'} mid-fine-tune ({workers} worker(s)): "
          f"stopped {stopped_after:.1f} s after the signal (grace {STOP_GRACE:.0f} s) with exit status "
          f"{process.returncode}; none of its {len(started)} "
          f"processes left; the {len(published)} objects published before it unchanged")
