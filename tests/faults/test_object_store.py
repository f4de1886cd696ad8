"""A flaky or crashing object store never yields a broken artifact.

- A writer SIGKILLed in the middle of an upload (a multipart file, a model directory, an
  overwrite of a published key) leaves nothing a reader takes as finished, and a retry
  publishes the artifact whole.
- The whole pipeline completes on S3 behind a proxy that answers 500/503, delays, and
  drops connections (before and after the request reached S3); the failed attempts are
  logged, and every published artifact verifies against its checksums when read back
  straight from S3.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from airrep.config import load_config
from infra.storage import MARKER_SUFFIX, ArtifactNotFoundError, open_store

ROOT = Path(__file__).resolve().parents[2]
PART = 5 * 1024 * 1024  # S3's smallest multipart part

WRITER = textwrap.dedent("""
    import sys
    from boto3.s3.transfer import TransferConfig
    from infra.storage import S3ArtifactStore

    bucket, prefix, kind, key, path = sys.argv[1:6]
    config = TransferConfig(multipart_threshold={part}, multipart_chunksize={part}, max_concurrency=1)
    store = S3ArtifactStore(bucket, prefix, transfer_config=config)
    getattr(store, "put_" + kind)(key, path)
    print("published", flush=True)
""").format(part=PART)


def _start_writer(s3_uri: str, endpoint: str, kind: str, key: str, path: Path) -> subprocess.Popen:
    parsed = urllib.parse.urlparse(s3_uri)
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    return subprocess.Popen([sys.executable, "-c", WRITER, parsed.netloc, parsed.path.strip("/"), kind, key, str(path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _kill_when(process: subprocess.Popen, seen: list[str], condition, timeout: float = 60.0) -> None:
    """SIGKILL the writer's process group once ``condition(seen requests)`` holds."""
    deadline = time.monotonic() + timeout
    while not condition(list(seen)):
        if process.poll() is not None:
            pytest.fail(f"writer exited before the fault point: {process.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"fault point not reached in {timeout:.0f} s; requests seen: {seen[-5:]}")
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def _assert_unpublished(store, key: str) -> None:
    assert not store.exists(key)
    assert key not in store.list("")
    with pytest.raises(ArtifactNotFoundError):
        store.get_bytes(key)


def _parts(seen: list[str]) -> int:
    return sum("partNumber=" in request for request in seen)


def test_killed_multipart_upload_is_never_published(s3_env, s3_server, fault_proxy, tmp_path):
    payload = np.random.default_rng(0).bytes(3 * PART + 1234)
    big = tmp_path / "losses.bin"
    big.write_bytes(payload)
    proxy = fault_proxy(slow_operations=("partNumber=",), slow_seconds=1.0)
    writer = _start_writer(s3_env, proxy.url, "file", "finetunes/big.bin", big)
    _kill_when(writer, proxy.log.seen, lambda seen: _parts(seen) >= 2)

    store = open_store(s3_env)
    _assert_unpublished(store, "finetunes/big.bin")
    retry = _start_writer(s3_env, s3_server, "file", "finetunes/big.bin", big)
    assert retry.wait(timeout=120) == 0, retry.stderr.read().decode()
    assert store.get_bytes("finetunes/big.bin") == payload


def test_killed_overwrite_hides_the_old_version_too(s3_env, s3_server, fault_proxy, tmp_path):
    """Half new, half old is never read: the key reads absent until the new version is whole."""
    store = open_store(s3_env)
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(b"old" * PART)
    new.write_bytes(b"new" * PART)
    store.put_file("models/m.bin", old)
    proxy = fault_proxy(slow_operations=("partNumber=",), slow_seconds=1.0)
    writer = _start_writer(s3_env, proxy.url, "file", "models/m.bin", new)
    _kill_when(writer, proxy.log.seen, lambda seen: _parts(seen) >= 2)
    _assert_unpublished(store, "models/m.bin")


def test_killed_directory_upload_is_never_published(s3_env, s3_server, fault_proxy, tmp_path):
    model = tmp_path / "model"
    (model / "tokenizer").mkdir(parents=True)
    files = {"config.json": b"{}", "model.safetensors": os.urandom(200_000), "tokenizer/vocab.txt": b"a\nb\n"}
    for name, data in files.items():
        (model / name).write_bytes(data)
    proxy = fault_proxy(slow_operations=("PUT",), slow_seconds=1.0)
    writer = _start_writer(s3_env, proxy.url, "dir", "models/abc", model)
    payload_puts = lambda seen: sum(r.startswith("PUT ") and "/models/abc/" in r for r in seen)  # noqa: E731
    _kill_when(writer, proxy.log.seen, lambda seen: payload_puts(seen) >= 2)

    store = open_store(s3_env)
    assert not store.exists("models/abc")
    assert store.list("models") == []
    with pytest.raises(ArtifactNotFoundError):
        store.get_dir("models/abc", tmp_path / "download")
    assert not (tmp_path / "download").exists()


@pytest.mark.slow
def test_pipeline_completes_on_a_flaky_store(micro_overrides, s3_env, s3_server, fault_proxy, raw_bucket,
                                             monkeypatch, log_messages):
    from flows.pipeline import pipeline

    proxy = fault_proxy(error_500=0.04, error_503=0.04, delay=0.04, delay_seconds=0.5, drop=0.04, seed=1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the artifact store goes through the proxy
    storage_log = log_messages("infra.storage", logging.WARNING)
    result = pipeline(load_config("configs/tiny.yaml", micro_overrides))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)

    injected = sum(proxy.log.injected.values())
    assert injected >= 5, proxy.log.injected
    retries = [m for m in storage_log if m.startswith("S3 ") and "attempt" in m and "failed" in m]
    assert retries, "failed S3 attempts were not logged"
    assert result["registry"]["version"] == "1" and np.isfinite(result["evaluation"]["lds"])

    # Every published artifact, read straight from S3 (no proxy), matches its marker.
    objects = raw_bucket(s3_env)
    prefix = urllib.parse.urlparse(s3_env).path.strip("/") + "/"
    markers = {k[len(prefix):-len(MARKER_SUFFIX)]: json.loads(v) for k, v in objects.items()
               if k.startswith(prefix) and k.endswith(MARKER_SUFFIX)}
    assert len(markers) >= 20
    checked = 0
    for key, marker in markers.items():
        files = marker["files"] if marker["kind"] == "dir" else {"": marker}
        for relative, record in files.items():
            name = prefix + key + ("/" + relative if relative else "")
            data = objects[name]
            assert len(data) == record["size"] and hashlib.sha256(data).hexdigest() == record["sha256"], name
            checked += 1
    store = open_store(s3_env)
    assert store.exists(result["model"]["key"]) and store.exists(result["index_key"])
    # Nothing lost: every fine-tune the micro pipeline makes (2 splits x 4 subsets, 4 held-out
    # subsets) is published.
    assert sum(k.startswith("finetunes/") for k in markers) == 12
    assert result["finetunes_computed"] + result["finetunes_skipped"] == 12
    print(f"flaky store: {proxy.log.requests} requests, injected {dict(proxy.log.injected)}, "
          f"{len(retries)} failed attempts logged, {len(markers)} artifacts / {checked} files verified")
