"""The artifact store: keyed blobs, JSON and directories on a local disk or on S3.

Every pipeline output (sampled index, per-subset losses, labels, model directories) is
published here under a key such as ``finetunes/<content key>.npy``. Tasks are retried,
run on several workers at once and can be killed at any moment, and they decide whether
to skip work with ``store.exists(key)``. That only works if a key that exists is a key
that is complete, so every write follows one publish protocol:

1. Remove the key's completion marker, if an earlier version left one. From here on the
   key reads as absent; a crash at any later point leaves it absent, so the producing
   task simply runs again instead of trusting a mix of old and new bytes.
2. Write the payload: one object at ``<key>``, or for a directory one object per file at
   ``<key>/<relative path>``. Locally each file goes to a hidden temporary file in the
   same folder, is fsynced and then ``os.replace``-d into place, so no reader ever opens
   a half-written file. On S3 each object is uploaded with ``upload_fileobj``/``upload_file``
   (multipart above the ``TransferConfig`` threshold; S3 makes an object visible only
   once its upload completes) and carries its sha256 in its metadata.
3. Verify what landed: locally the size and sha256 are recomputed from the written file;
   on S3 ``head_object`` must report the local size and the sha256 this writer recorded
   (which also catches a concurrent writer having replaced the object meanwhile).
4. Write the completion marker ``<key>.complete.json`` last, atomically (one PUT, or a
   temporary file plus ``os.replace``). It holds the sha256 and size of every payload
   file, so a directory has a single marker listing all of its files.

Readers honour only keys with a marker: ``exists`` and ``list`` look for markers, and
every ``get_*`` reads the marker first, then re-hashes what it reads and raises
:class:`ArtifactCorruptError` if a byte differs from what was published. Downloads go to
a temporary file beside the destination and are renamed into place only once verified.
Overwriting a key is allowed (steps 1-4 again); files an overwritten directory no longer
has are deleted after the new marker is written. Keys derived from content
(:func:`content_key`) make retries idempotent: a retried task writes the same bytes.

Keys are ``/``-separated relative paths. Every public method rejects keys that could
address anything outside the store (absolute paths, ``..`` or ``.`` segments, backslashes,
NUL, empty segments) with :class:`UnsafeKeyError`; build keys from untrusted ids with
:func:`safe_key`, which percent-escapes each component.

S3 credentials and the endpoint come only from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``), as boto3 reads
them; this module never reads, stores, logs or prints them, and a store's ``repr`` shows
only its URI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from airrep.atomic import atomic_path
from airrep.keys import MARKER_SUFFIX, UnsafeKeyError, check_key, content_key, safe_key

__all__ = ["ArtifactCorruptError", "ArtifactNotFoundError", "ArtifactStoreError", "UnsafeKeyError", "check_key",
           "content_key", "open_store", "safe_key"]

logger = logging.getLogger(__name__)

# botocore's DEBUG logs (``airrep -v``) print signed request headers: the access key id sits
# in ``Credential=`` and a session token in ``X-Amz-Security-Token``. Mask both.
_SIGNED = re.compile(r"(Credential=)[^/\s,'\"]+|(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,}]+",
                     re.IGNORECASE)


class _RedactSignedRequests(logging.Filter):
    """Mask access key ids and session tokens in botocore's request logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SIGNED.sub(lambda m: (m.group(1) or m.group(2)) + "***", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


for _name in ("botocore.endpoint", "botocore.auth", "botocore.hooks", "botocore.parsers"):
    logging.getLogger(_name).addFilter(_RedactSignedRequests())

MARKER_FORMAT = "airrep-artifact/1"
_CHUNK = 1 << 20


class ArtifactStoreError(Exception):
    """Base class of the store's errors."""


class ArtifactNotFoundError(ArtifactStoreError, KeyError):
    """No published (complete) artifact under this key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ArtifactCorruptError(ArtifactStoreError):
    """A published artifact whose bytes no longer match its completion marker."""


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """What the completion marker remembers about one payload file."""

    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


def _check_prefix(prefix: str) -> str:
    if prefix == "":
        return prefix
    # A prefix may end mid-segment or with '/', but must not climb out of the store.
    check_key(prefix.rstrip("/") or "/", what="prefix")
    return prefix


def _sha256_file(path: Path) -> FileRecord:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileRecord(digest.hexdigest(), size)


def _sha256_bytes(data: bytes) -> FileRecord:
    return FileRecord(hashlib.sha256(data).hexdigest(), len(data))


def _dir_files(directory: Path) -> dict[str, Path]:
    """Every file under ``directory`` by its relative ``/``-path (symlinked files followed)."""
    files: dict[str, Path] = {}
    for folder, subdirs, names in os.walk(directory):
        subdirs.sort()
        for name in sorted(names):
            path = Path(folder, name)
            if path.is_file():
                rel = path.relative_to(directory).as_posix()
                files[check_key(rel, what=f"file {rel!r} in {directory}")] = path
    return files


def _corrupt(key: str, detail: str) -> ArtifactCorruptError:
    return ArtifactCorruptError(
        f"artifact {key!r} is corrupt: {detail}. Its bytes no longer match what was published; "
        f"re-run the step that produces it (publishing the key again overwrites it)")


class ArtifactStore(ABC):
    """Published artifacts under one root (a local folder or an S3 prefix).

    Subclasses provide raw object access; this class owns the publish protocol described
    in the module docstring, so both backends behave identically.
    """

    uri: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # ---- raw object access, implemented per backend (names are store-relative) ----

    @abstractmethod
    def _write_payload(self, name: str, source: bytes | Path) -> FileRecord:
        """Write one payload object, verify it landed, return its sha256 and size."""

    @abstractmethod
    def _read_payload(self, name: str) -> bytes:
        """The object's bytes; FileNotFoundError if it is missing."""

    @abstractmethod
    def _download_payload(self, name: str, temp: Path) -> None:
        """Copy the object to ``temp``; FileNotFoundError if it is missing."""

    @abstractmethod
    def _write_small(self, name: str, data: bytes) -> None:
        """Atomically write a small object (a marker)."""

    @abstractmethod
    def _read_small(self, name: str) -> bytes | None:
        """A small object's bytes, or None if it does not exist."""

    @abstractmethod
    def _exists_raw(self, name: str) -> bool: ...

    @abstractmethod
    def _delete_raw(self, name: str) -> None:
        """Delete the object if it exists."""

    @abstractmethod
    def _list_raw(self, prefix: str) -> Iterator[str]:
        """Names of all objects whose name starts with ``prefix``."""

    @abstractmethod
    def _uri_of(self, name: str) -> str: ...

    # ---- the publish protocol ----

    def _marker(self, key: str) -> dict[str, Any] | None:
        raw = self._read_small(key + MARKER_SUFFIX)
        if raw is None:
            return None
        try:
            marker = json.loads(raw)
            if marker.get("format") != MARKER_FORMAT or marker.get("kind") not in ("object", "dir"):
                raise ValueError("unknown marker format")
        except (ValueError, AttributeError) as exc:
            raise _corrupt(key, f"its completion marker is unreadable ({exc})") from exc
        return marker

    def _require_marker(self, key: str, kind: str) -> dict[str, Any]:
        marker = self._marker(key)
        if marker is None:
            raise ArtifactNotFoundError(
                f"no published artifact {key!r} in {self.uri} (never written, or its writer did "
                f"not finish; publish it first)")
        if marker["kind"] != kind:
            other = "get_dir" if marker["kind"] == "dir" else "get_bytes/get_file/get_json"
            raise ArtifactStoreError(
                f"artifact {key!r} in {self.uri} is a {marker['kind']}; read it with {other}")
        return marker

    def _begin(self, key: str) -> dict[str, Any] | None:
        """Step 1: unpublish the key; return the previous marker so stale files can go later."""
        try:
            previous = self._marker(key)
        except ArtifactCorruptError:
            previous = None
        self._delete_raw(key + MARKER_SUFFIX)
        return previous

    def _commit(self, key: str, marker: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Step 4: write the marker last, then drop files the previous version had and this lacks."""
        marker = {"format": MARKER_FORMAT, "key": key, **marker,
                  "published_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self._write_small(key + MARKER_SUFFIX, json.dumps(marker, indent=1, sort_keys=True).encode())
        if previous is not None and previous.get("kind") == "dir":
            kept = set(marker.get("files", {})) if marker["kind"] == "dir" else set()
            for rel in set(previous.get("files", {})) - kept:
                try:
                    self._delete_raw(f"{key}/{check_key(rel)}")
                except UnsafeKeyError:
                    continue
        logger.info("published %s", self._uri_of(key))

    def _publish_object(self, key: str, source: bytes | Path) -> None:
        check_key(key)
        previous = self._begin(key)
        record = self._write_payload(key, source)
        self._commit(key, {"kind": "object", **record.to_json()}, previous)

    def _verified_bytes(self, key: str) -> bytes:
        marker = self._require_marker(key, "object")
        try:
            data = self._read_payload(key)
        except FileNotFoundError as exc:
            raise _corrupt(key, "its completion marker exists but the payload object is missing") from exc
        _check_record(key, key, _sha256_bytes(data), marker)
        return data

    def _download_verified(self, key: str, name: str, expected: dict[str, Any], dest: Path) -> None:
        with atomic_path(dest) as temp:
            try:
                self._download_payload(name, temp)
            except FileNotFoundError as exc:
                raise _corrupt(key, f"its marker lists {name!r} but that object is missing") from exc
            _check_record(key, name, _sha256_file(temp), expected)

    # ---- public API ----

    def exists(self, key: str) -> bool:
        """True only for a published, complete artifact (its completion marker is present)."""
        return self._exists_raw(check_key(key) + MARKER_SUFFIX)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Publish ``data`` under ``key`` (replacing any previous version)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"put_bytes({key!r}) needs bytes, got {type(data).__name__}")
        self._publish_object(key, bytes(data))

    def get_bytes(self, key: str) -> bytes:
        """The published bytes; ArtifactNotFoundError if unpublished, ArtifactCorruptError if altered."""
        return self._verified_bytes(check_key(key))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Publish the file at ``path`` under ``key`` (multipart on S3 for large files)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"put_file({key!r}): {path} is not a file")
        self._publish_object(key, path)

    def get_file(self, key: str, dest: str | os.PathLike[str]) -> Path:
        """Download ``key`` to the file ``dest`` (created or replaced only once verified)."""
        check_key(key)
        marker = self._require_marker(key, "object")
        dest = Path(dest)
        self._download_verified(key, key, marker, dest)
        return dest

    def put_json(self, key: str, obj: Any) -> None:
        """Publish ``obj`` as UTF-8 JSON."""
        self.put_bytes(key, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8"))

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_dir(self, key: str, directory: str | os.PathLike[str]) -> None:
        """Publish every file under ``directory`` (e.g. an HF model dir) with one marker listing them."""
        check_key(key)
        directory = Path(directory)
        if not directory.is_dir():
            raise NotADirectoryError(f"put_dir({key!r}): {directory} is not a directory")
        files = _dir_files(directory)
        previous = self._begin(key)
        records = {rel: self._write_payload(f"{key}/{rel}", path).to_json() for rel, path in files.items()}
        self._commit(key, {"kind": "dir", "files": records,
                           "size": sum(r["size"] for r in records.values())}, previous)

    def get_dir(self, key: str, dest: str | os.PathLike[str]) -> Path:
        """Download a published directory into ``dest`` (created if needed); return ``dest``."""
        check_key(key)
        marker = self._require_marker(key, "dir")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        files = marker.get("files")
        if not isinstance(files, dict):
            raise _corrupt(key, "its completion marker has no file list")
        for rel, expected in sorted(files.items()):
            try:
                check_key(rel)
            except UnsafeKeyError as exc:
                raise _corrupt(key, f"its marker lists an unsafe path {rel!r}") from exc
            self._download_verified(key, f"{key}/{rel}", expected, dest / rel)
        return dest

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys of published artifacts starting with ``prefix`` (a plain string prefix)."""
        _check_prefix(prefix)
        keys = []
        for name in self._list_raw(prefix):
            if not name.endswith(MARKER_SUFFIX):
                continue
            key = name[: -len(MARKER_SUFFIX)]
            try:
                check_key(key)
            except UnsafeKeyError:
                continue
            if key.startswith(prefix):
                keys.append(key)
        return sorted(keys)

    def uri_for(self, key: str) -> str:
        """Where ``key``'s payload lives (``file://...`` or ``s3://...``; the folder of a put_dir key)."""
        return self._uri_of(check_key(key))


def _check_record(key: str, name: str, actual: FileRecord, expected: dict[str, Any]) -> None:
    if actual.size != expected.get("size") or actual.sha256 != expected.get("sha256"):
        published = f"{expected.get('size')} bytes with sha256 {str(expected.get('sha256'))[:12]}…"
        raise _corrupt(key, f"{name!r} has {actual.size} bytes with sha256 {actual.sha256[:12]}…, "
                            f"published as {published}")


class LocalArtifactStore(ArtifactStore):
    """Artifacts as files under ``root``; the root is created on the first write."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, name: str) -> Path:
        path = self.root.joinpath(*name.split("/"))
        # check_key already rules out escapes; this guards against a future bug in it.
        if os.path.commonpath([self.root, path]) != str(self.root):
            raise UnsafeKeyError(f"key {name!r} resolves outside {self.root}")
        return path

    def _atomic_write(self, path: Path, source: bytes | Path) -> FileRecord:
        digest, size = hashlib.sha256(), 0
        with atomic_path(path) as temp:
            with open(temp, "wb") as out:
                reader = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
                with reader:
                    while chunk := reader.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        _fsync_dir(path.parent)
        return FileRecord(digest.hexdigest(), size)

    def _write_payload(self, name: str, source: bytes | Path) -> FileRecord:
        path = self._path(name)
        written = self._atomic_write(path, source)
        landed = _sha256_file(path)
        if landed != written:
            raise ArtifactStoreError(
                f"writing {name!r} to {path}: read back {landed.size} bytes, sha256 {landed.sha256[:12]}…, "
                f"but wrote {written.size} bytes, sha256 {written.sha256[:12]}… (disk full or a concurrent "
                f"writer?); nothing was published, retry")
        return written

    def _read_payload(self, name: str) -> bytes:
        path = self._path(name)
        if not path.is_file():
            raise FileNotFoundError(path)
        return path.read_bytes()

    def _download_payload(self, name: str, temp: Path) -> None:
        path = self._path(name)
        if not path.is_file():
            raise FileNotFoundError(path)
        shutil.copyfile(path, temp)

    def _write_small(self, name: str, data: bytes) -> None:
        self._atomic_write(self._path(name), data)

    def _read_small(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def _exists_raw(self, name: str) -> bool:
        return self._path(name).is_file()

    def _delete_raw(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass

    def _list_raw(self, prefix: str) -> Iterator[str]:
        # Walk only the deepest folder the prefix names completely.
        start = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        if not start.is_dir():
            return
        for folder, _, names in os.walk(start):
            rel_folder = Path(folder).relative_to(self.root).as_posix()
            for name in names:
                rel = name if rel_folder == "." else f"{rel_folder}/{name}"
                if rel.startswith(prefix):
                    yield rel

    def _uri_of(self, name: str) -> str:
        return self._path(name).as_uri()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class S3ArtifactStore(ArtifactStore):
    """Artifacts as objects under ``s3://bucket/prefix``, through boto3.

    Credentials, endpoint and region come from the environment (region defaults to
    us-east-1). The boto3 client is created lazily and dropped when pickled, so a store
    can be sent to Dask workers; each worker builds its own client from its environment.
    """

    def __init__(self, bucket: str, prefix: str = "", max_attempts: int = 8, *, transfer_config: Any = None,
                 connect_timeout: float = 10.0, read_timeout: float = 120.0) -> None:
        from boto3.s3.transfer import TransferConfig

        if not bucket:
            raise ValueError("S3 store URI needs a bucket: s3://bucket/prefix")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix, what="S3 prefix")
        self.bucket, self.prefix = bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.max_attempts = max_attempts
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        # Multipart above 64 MiB in 16 MiB parts: a 500 MB model goes up in ~32 retryable parts.
        self.transfer_config = transfer_config or TransferConfig(
            multipart_threshold=64 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4)
        self._client_obj = None
        self._client_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client_obj"] = None
        del state["_client_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()

    @property
    def _client(self) -> Any:
        with self._client_lock:
            if self._client_obj is None:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session()
                self._client_obj = session.client("s3", config=Config(
                    region_name=session.region_name or "us-east-1",
                    retries={"max_attempts": self.max_attempts, "mode": "standard"},
                    connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                ))
                self._client_obj.meta.events.register("needs-retry.s3", _log_retry)
            return self._client_obj

    def _object_key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one boto3 call; missing objects become FileNotFoundError, setup errors say what to fix."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"{self.uri}: {what}") from exc
            if code == "NoSuchBucket":
                raise ArtifactStoreError(f"bucket {self.bucket!r} does not exist at the S3 endpoint; "
                                         f"create it or fix storage.uri ({self.uri})") from exc
            raise ArtifactStoreError(f"S3 {what} in {self.uri} failed: {code or exc}") from exc
        except NoCredentialsError as exc:
            raise ArtifactStoreError(
                f"no S3 credentials for {self.uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                f"(and AWS_ENDPOINT_URL for a non-AWS server)") from exc
        except EndpointConnectionError as exc:
            raise ArtifactStoreError(f"cannot reach the S3 endpoint for {self.uri} ({exc}); "
                                     f"check AWS_ENDPOINT_URL and that the server is running") from exc

    def _write_payload(self, name: str, source: bytes | Path) -> FileRecord:
        record = _sha256_bytes(source) if isinstance(source, bytes) else _sha256_file(source)
        key = self._object_key(name)
        extra = {"Metadata": {"sha256": record.sha256}}
        if isinstance(source, bytes):
            self._call(f"upload of {name}", self._client.upload_fileobj, io.BytesIO(source), self.bucket, key,
                       ExtraArgs=extra, Config=self.transfer_config)
        else:
            self._call(f"upload of {name}", self._client.upload_file, str(source), self.bucket, key,
                       ExtraArgs=extra, Config=self.transfer_config)
        head = self._call(f"head of {name}", self._client.head_object, Bucket=self.bucket, Key=key)
        landed_size, landed_sha = head.get("ContentLength"), head.get("Metadata", {}).get("sha256")
        if landed_size != record.size or landed_sha != record.sha256:
            raise ArtifactStoreError(
                f"uploading {name!r} to {self.uri}: the server holds {landed_size} bytes (sha256 "
                f"{landed_sha}), expected {record.size} bytes (sha256 {record.sha256}); a concurrent "
                f"writer or a broken upload. Nothing was published; retry")
        return record

    def _read_payload(self, name: str) -> bytes:
        response = self._call(f"read of {name}", self._client.get_object, Bucket=self.bucket,
                              Key=self._object_key(name))
        with response["Body"] as body:
            return body.read()

    def _download_payload(self, name: str, temp: Path) -> None:
        self._call(f"download of {name}", self._client.download_file, self.bucket, self._object_key(name),
                   str(temp), Config=self.transfer_config)

    def _write_small(self, name: str, data: bytes) -> None:
        self._call(f"write of {name}", self._client.put_object, Bucket=self.bucket,
                   Key=self._object_key(name), Body=data, ContentType="application/json")

    def _read_small(self, name: str) -> bytes | None:
        try:
            return self._read_payload(name)
        except FileNotFoundError:
            return None

    def _exists_raw(self, name: str) -> bool:
        try:
            self._call(f"head of {name}", self._client.head_object, Bucket=self.bucket,
                       Key=self._object_key(name))
        except FileNotFoundError:
            return False
        return True

    def _delete_raw(self, name: str) -> None:
        self._call(f"delete of {name}", self._client.delete_object, Bucket=self.bucket,
                   Key=self._object_key(name))

    def _list_raw(self, prefix: str) -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = self._call("listing", lambda: list(paginator.paginate(Bucket=self.bucket,
                                                                      Prefix=base + prefix)))
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][len(base):]

    def _uri_of(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(name)}"


def _log_retry(response: Any = None, attempts: int = 0, caught_exception: Exception | None = None,
               operation: Any = None, **_: Any) -> None:
    """Log each failed S3 attempt (botocore retries silently): a flaky store shows in the logs.

    Registered on botocore's ``needs-retry`` event, which fires after every attempt; only
    attempts that failed (an HTTP status >= 500, a throttle or a connection error) are logged,
    with the operation name and status, never the request (it could carry signed headers).
    """
    status = None
    if response is not None:
        status = response[0].status_code if response[0] is not None else None
    if caught_exception is None and (status is None or status < 500) and status != 429:
        return
    cause = type(caught_exception).__name__ if caught_exception is not None else f"HTTP {status}"
    name = getattr(operation, "name", "request")
    logger.warning("S3 %s attempt %d failed (%s)", name, attempts, cause)


def open_store(uri: str, max_attempts: int = 8) -> ArtifactStore:
    """Open the store at ``uri``: ``s3://bucket/prefix``, ``file:///abs/path`` or a local path.

    A local path may be relative (resolved against the current directory now) and is
    created on the first write. ``max_attempts`` bounds botocore's retries per S3 call.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError("storage uri is empty; use a local path, file:///abs/path or s3://bucket/prefix")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return S3ArtifactStore(parsed.netloc, parsed.path, max_attempts=max_attempts)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} names a host; use file:///absolute/path")
        return LocalArtifactStore(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise ValueError(f"unsupported storage uri {uri!r}; use a local path, file:///abs/path or s3://bucket/prefix")
    return LocalArtifactStore(uri)
