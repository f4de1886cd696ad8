"""The artifact store on a local folder and on a real S3 server (moto_server over HTTP).

Crashes and corruption are simulated by writing objects behind the store's back, with
plain file writes or a separate boto3 client, exactly as a killed writer or a bad disk
would leave them.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from infra.storage import (
    ArtifactCorruptError,
    ArtifactNotFoundError,
    ArtifactStore,
    LocalArtifactStore,
    S3ArtifactStore,
    UnsafeKeyError,
    content_key,
    open_store,
    safe_key,
)

MB = 1024 * 1024


@dataclass
class Backend:
    """A store plus raw access to the objects beneath it (names relative to the store's root)."""

    store: ArtifactStore
    write_raw: Callable[[str, bytes], None]
    read_raw: Callable[[str], bytes]


def _local_backend(root: Path) -> Backend:
    store = open_store(str(root))

    def write_raw(name: str, data: bytes) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return Backend(store, write_raw, lambda name: (root / name).read_bytes())


def _s3_backend(uri: str) -> Backend:
    store = open_store(uri)
    assert isinstance(store, S3ArtifactStore)
    client = boto3.client("s3")

    def write_raw(name: str, data: bytes) -> None:
        client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{name}", Body=data)

    def read_raw(name: str) -> bytes:
        return client.get_object(Bucket=store.bucket, Key=f"{store.prefix}/{name}")["Body"].read()

    return Backend(store, write_raw, read_raw)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return _local_backend(tmp_path / "store")
    return _s3_backend(request.getfixturevalue("s3_env"))


def _model_dir(root: Path) -> Path:
    """A small HF-like model directory with a nested subfolder."""
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 8}')
    (root / "model.safetensors").write_bytes(os.urandom(3000))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    (root / "tokenizer" / "deeper").mkdir()
    (root / "tokenizer" / "deeper" / "merges.txt").write_bytes(b"")
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_bytes_round_trip_and_exists(backend: Backend) -> None:
    store = backend.store
    key = safe_key("finetunes", "abc.npy")
    assert not store.exists(key)
    store.put_bytes(key, b"\x00losses\xff")
    assert store.exists(key)
    assert store.get_bytes(key) == b"\x00losses\xff"
    store.put_bytes(key, b"overwritten")
    assert store.get_bytes(key) == b"overwritten"
    assert store.uri_for(key).startswith(store.uri) and store.uri_for(key).endswith("finetunes/abc.npy")


def test_json_and_file_round_trip(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    curve = {"step": [0, 100], "lds": [0.1, 0.25], "note": "ünïcode"}
    store.put_json("models/m1-curve.json", curve)
    assert store.get_json("models/m1-curve.json") == curve

    source = tmp_path / "report.csv"
    source.write_text("method,lds\nairrep,0.3\n")
    store.put_file("evaluations/m1/report.csv", source)
    fetched = store.get_file("evaluations/m1/report.csv", tmp_path / "out" / "fetched.csv")
    assert fetched == tmp_path / "out" / "fetched.csv"
    assert fetched.read_bytes() == source.read_bytes()


def test_dir_round_trip_with_nested_folders(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    model = _model_dir(tmp_path / "model")
    store.put_dir("models/m1", model)
    assert store.exists("models/m1")
    target = tmp_path / "fetched"
    target.mkdir()  # an existing (empty) destination is fine, as with cache_dir()
    assert store.get_dir("models/m1", target) == target
    assert _files(target) == _files(model)
    with pytest.raises(Exception, match="get_dir"):
        store.get_bytes("models/m1")


def test_dir_overwrite_publishes_only_the_new_files(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    store.put_dir("models/m1", _model_dir(tmp_path / "v1"))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "config.json").write_text('{"hidden_size": 16}')
    store.put_dir("models/m1", v2)
    assert _files(store.get_dir("models/m1", tmp_path / "fetched")) == {"config.json": b'{"hidden_size": 16}'}


def test_large_file_goes_through_multipart(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    if isinstance(store, S3ArtifactStore):
        store.transfer_config = TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * MB))
    store.put_file("big.bin", big)
    if isinstance(store, S3ArtifactStore):
        head = boto3.client("s3").head_object(Bucket=store.bucket, Key=f"{store.prefix}/big.bin")
        assert head["ETag"].strip('"').endswith("-4")  # a multipart ETag says how many parts
        assert head["ContentLength"] == 20 * MB
    fetched = store.get_file("big.bin", tmp_path / "big-copy.bin")
    assert fetched.read_bytes() == big.read_bytes()


def test_payload_without_marker_is_invisible(backend: Backend, tmp_path: Path) -> None:
    """A writer killed after its payload but before its marker has published nothing."""
    store = backend.store
    store.put_bytes("runs/done.bin", b"complete")
    backend.write_raw("runs/crashed.bin", b"half of the bytes")
    backend.write_raw("runs/crashed-model/config.json", b"{}")
    assert not store.exists("runs/crashed.bin")
    assert not store.exists("runs/crashed-model")
    assert store.list() == ["runs/done.bin"]
    assert store.list("runs/") == ["runs/done.bin"]
    with pytest.raises(ArtifactNotFoundError, match="runs/crashed.bin"):
        store.get_bytes("runs/crashed.bin")
    with pytest.raises(ArtifactNotFoundError):
        store.get_dir("runs/crashed-model", tmp_path / "out")
    with pytest.raises(KeyError):  # ArtifactNotFoundError is a KeyError
        store.get_json("never/written.json")


def test_interrupted_overwrite_leaves_key_unpublished(backend: Backend, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash halfway through re-publishing a directory must not leave old-marker-new-bytes."""
    store = backend.store
    store.put_dir("models/m1", _model_dir(tmp_path / "v1"))
    real_write = store._write_payload
    calls = []

    def dies_on_second_file(name: str, source: bytes | Path):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("worker killed")
        return real_write(name, source)

    monkeypatch.setattr(store, "_write_payload", dies_on_second_file)
    with pytest.raises(OSError, match="worker killed"):
        store.put_dir("models/m1", _model_dir(tmp_path / "v2"))
    assert not store.exists("models/m1")
    assert store.list("models/") == []


def test_corrupted_payload_raises_on_read(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    store.put_bytes("labels/split_000.npz", b"original labels")
    backend.write_raw("labels/split_000.npz", b"flipped  labels")  # same size, other bytes
    with pytest.raises(ArtifactCorruptError, match=r"labels/split_000\.npz.*re-run"):
        store.get_bytes("labels/split_000.npz")
    with pytest.raises(ArtifactCorruptError):
        store.get_file("labels/split_000.npz", tmp_path / "labels.npz")
    assert not (tmp_path / "labels.npz").exists()  # nothing unverified reaches the destination
    assert not list(tmp_path.glob(".labels.npz.tmp-*"))  # and no temporary file is left behind

    store.put_dir("models/m1", _model_dir(tmp_path / "model"))
    backend.write_raw("models/m1/tokenizer/vocab.txt", b"tampered")
    with pytest.raises(ArtifactCorruptError, match="vocab.txt"):
        store.get_dir("models/m1", tmp_path / "fetched")


def test_list_returns_published_keys_under_a_prefix(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    assert store.list() == []
    store.put_bytes("finetunes/a.npy", b"a")
    store.put_bytes("finetunes/b.npy", b"b")
    store.put_json("index/i.json", [1])
    store.put_dir("models/m1", _model_dir(tmp_path / "model"))
    assert store.list() == ["finetunes/a.npy", "finetunes/b.npy", "index/i.json", "models/m1"]
    assert store.list("finetunes/") == ["finetunes/a.npy", "finetunes/b.npy"]
    assert store.list("fine") == ["finetunes/a.npy", "finetunes/b.npy"]
    assert store.list("models/m1") == ["models/m1"]
    assert store.list("nothing/") == []


def test_safe_key_escapes_every_component() -> None:
    key = safe_key("a", "../x")
    assert ".." not in key.split("/")
    assert key.startswith("a/") and key.count("/") == 1
    assert safe_key("runs", "a/b", "c d") == "runs/a%2Fb/c%20d"
    assert safe_key("a%2Fb") != safe_key("a/b")  # escaping is injective
    for bad in ("", ".", ".."):
        with pytest.raises(UnsafeKeyError):
            safe_key("runs", bad)


UNSAFE_KEYS = ["../x", "/etc/passwd", "a/../../b", "a\\b", "a\x00b", "", "a//b", "./a", "a/",
               "x.complete.json"]


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_unsafe_keys_are_rejected(backend: Backend, key: str, tmp_path: Path) -> None:
    store = backend.store
    with pytest.raises(UnsafeKeyError):
        store.put_bytes(key, b"")
    for call in (store.exists, store.get_bytes, store.uri_for):
        with pytest.raises(UnsafeKeyError):
            call(key)
    with pytest.raises(UnsafeKeyError):
        store.get_file(key, tmp_path / "out")
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()
    assert store.list() == []


def test_unsafe_list_prefix_is_rejected(backend: Backend) -> None:
    for prefix in ("../", "/", "a/../.."):
        with pytest.raises(UnsafeKeyError):
            backend.store.list(prefix)


def test_content_key_is_canonical() -> None:
    first = content_key(members=["a", "b"], settings={"lr": 1e-4, "epochs": 2}, seed=0)
    again = content_key(seed=0, settings={"epochs": 2, "lr": 1e-4}, members=["a", "b"])
    assert first == again
    assert len(first) == 32 and int(first, 16) >= 0
    assert content_key(members=["b", "a"], settings={"lr": 1e-4, "epochs": 2}, seed=0) != first
    assert content_key(path=Path("/x/y")) == content_key(path="/x/y")
    with pytest.raises(TypeError):
        content_key(handle=object())


def test_s3_store_never_shows_credentials(s3_env: str, caplog: pytest.LogCaptureFixture,
                                          tmp_path: Path) -> None:
    key_id, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    caplog.set_level(logging.DEBUG)  # every logger, botocore's included
    store = open_store(s3_env, max_attempts=3)
    assert repr(store) == f"S3ArtifactStore({s3_env!r})"
    store.put_bytes("k.bin", b"payload")
    store.put_dir("m", _model_dir(tmp_path / "model"))
    assert store.get_bytes("k.bin") == b"payload"
    with pytest.raises(ArtifactNotFoundError) as missing:
        store.get_bytes("absent.bin")
    assert "published" in caplog.text and caplog.records
    for text in (repr(store), str(store), caplog.text, str(missing.value)):
        assert secret not in text
    own_records = "\n".join(r.getMessage() for r in caplog.records if r.name == "infra.storage")
    assert key_id not in own_records and key_id not in repr(store)
    # A store sent to a worker (pickled) carries no client and no credentials.
    blob = pickle.dumps(store)
    assert secret.encode() not in blob and key_id.encode() not in blob
    assert pickle.loads(blob).get_bytes("k.bin") == b"payload"


def test_open_store_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_uri = open_store((tmp_path / "a").as_uri())
    assert isinstance(by_uri, LocalArtifactStore) and by_uri.root == tmp_path / "a"
    assert repr(by_uri) == f"LocalArtifactStore({(tmp_path / 'a').as_uri()!r})"
    assert open_store(str(tmp_path / "a")).uri == by_uri.uri

    monkeypatch.chdir(tmp_path)
    relative = open_store(".work/artifacts")
    assert not (tmp_path / ".work").exists()  # created on the first write, not on open
    relative.put_bytes("x/y.bin", b"1")
    assert (tmp_path / ".work" / "artifacts" / "x" / "y.bin").read_bytes() == b"1"
    assert relative.exists("x/y.bin")
    with pytest.raises(ValueError, match="unsupported"):
        open_store("gs://bucket/prefix")
