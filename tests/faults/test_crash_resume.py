"""A label-generation run SIGKILLed midway loses no finished fine-tune: the re-run computes
exactly the missing ones, and its labels equal those of a run that was never interrupted."""

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

from flows.label_generation import label_generation
from infra.storage import MARKER_SUFFIX

ROOT = Path(__file__).resolve().parents[2]
N_SUBSETS = 6  # per split; 2 splits -> 12 fine-tunes
KILL_AFTER = 4


def _published_finetunes(s3_uri: str, raw_bucket) -> set[str]:
    prefix = urllib.parse.urlparse(s3_uri).path.strip("/") + "/finetunes/"
    return {k for k in raw_bucket(s3_uri) if k.startswith(prefix) and k.endswith(MARKER_SUFFIX)}


def test_sigkill_then_resume_redoes_only_the_missing_finetunes(micro_overrides, s3_env, raw_bucket, tmp_path,
                                                               published_labels):
    from prefect.settings import PREFECT_API_URL

    overrides = micro_overrides + [f"sampling.n_subsets={N_SUBSETS}"]
    total = 2 * N_SUBSETS
    command = [sys.executable, "-m", "flows.cli", "labels", "-c", "configs/tiny.yaml"]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    log = (tmp_path / "killed-run.log").open("wb")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_published_finetunes(s3_env, raw_bucket)) < KILL_AFTER:
        if process.poll() is not None:
            pytest.fail(f"the run exited before the kill point:\n{(tmp_path / 'killed-run.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("no fine-tunes were published within 10 minutes")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    published = len(_published_finetunes(s3_env, raw_bucket))
    assert KILL_AFTER <= published < total

    resumed = label_generation("configs/tiny.yaml", overrides)
    assert resumed["skipped"] == published
    assert resumed["computed"] == total - published

    fresh = overrides + [f"storage.uri={s3_env.rsplit('/', 1)[0]}/uninterrupted"]
    uninterrupted = label_generation("configs/tiny.yaml", fresh)
    assert uninterrupted["computed"] == total
    for after_crash, clean in zip(published_labels(resumed, overrides), published_labels(uninterrupted, fresh),
                                    strict=True):
        np.testing.assert_array_equal(after_crash, clean)
    print(f"crash and resume: killed after {published}/{total} published, re-run computed "
          f"{resumed['computed']}, labels equal to an uninterrupted run")
