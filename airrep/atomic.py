"""Publish a local file atomically: readers see the old file or the whole new one, never a part.

The payload goes to a uniquely named temporary file in the same folder (two writers at once
never share one), is flushed to disk, and is then renamed over the target. This is the one
place that does so: :func:`atomic_path` for writers that need a path (safetensors, a
streamed download), :func:`write_bytes_atomic` / :func:`write_text_atomic` for payloads in
memory, :func:`atomic_dir` for a folder (a saved model).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block
    ends without an exception, deleted otherwise. The writer flushes its own file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A uniquely named temporary folder beside ``path`` to fill; it takes ``path``'s place when
    the block ends without an exception and is deleted otherwise. A folder cannot be renamed
    over a non-empty one, so an existing ``path`` is removed first: a reader in between finds
    no folder, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    temp.mkdir()
    try:
        yield temp
        shutil.rmtree(path, ignore_errors=True)
        temp.rename(path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))
