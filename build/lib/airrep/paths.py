"""Where cached, re-derivable files live (converted corpora, downloaded archives, base LLMs)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$AIRREP_CACHE`` or ``~/.cache/airrep``, created on demand.

    Everything here can be rebuilt from packages and configs, so deleting it is always safe.
    """
    root = Path(os.environ.get("AIRREP_CACHE", Path.home() / ".cache" / "airrep")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def cache_lock(entry: Path) -> Iterator[None]:
    """Hold a cross-process lock on one cache entry while it is built or fetched.

    Several processes can want the same entry at once (test workers, Dask workers, two runs):
    the first builds it, the others wait and then find it built. ``filelock`` (already a
    dependency of torch and transformers) does the OS-level locking. The lock files live in
    ``.locks`` under the cache root, so cache folders hold only what they cache.
    """
    from filelock import FileLock

    digest = hashlib.sha1(str(Path(entry).resolve()).encode()).hexdigest()[:16]
    with FileLock(cache_dir(".locks") / f"{Path(entry).name}-{digest}.lock"):
        yield
