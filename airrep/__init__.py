"""AirRep: learned training-data attribution.

    from airrep import AirRep, attribute, select
    model = AirRep.from_pretrained("path/to/airrep")
    hits = attribute(model, [("What is 2+2?", "4")], corpus, k=10)
    chosen = select(model, targets, candidates, budget=1000)

The names below load on first use, so that ``import airrep.config`` (the CLI, ``--help``)
does not import torch and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AirRep": "airrep.model",
    "attribute": "airrep.api",
    "select": "airrep.api",
    "lds": "airrep.metrics",
    "normalize": "airrep.labels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'airrep' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
