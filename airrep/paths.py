"""Where cached, re-derivable files live (converted corpora, downloaded archives, base LLMs)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$AIRREP_CACHE`` or ``~/.cache/airrep``, created on demand.

    Everything here can be rebuilt from packages and configs, so deleting it is always safe.
    """
    root = Path(os.environ.get("AIRREP_CACHE", Path.home() / ".cache" / "airrep")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
