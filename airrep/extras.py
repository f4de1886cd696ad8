"""Optional dependencies, imported where they are used, with an error that says what to install.

The package's core runs the pipeline on any corpus file and encoder path. Three extras add
the rest (pyproject.toml): ``baselines`` (dattri: LoGra, TracIn, TRAK), ``demo`` (the
packaged ShareGPT corpus and MiniLM weights that the shipped configs use) and ``hub``
(``datasets``, for corpora named by a hub id). A fourth, ``postgres`` (psycopg2), is the
driver SQLAlchemy loads for a ``tracking.uri`` of ``postgresql+psycopg2://...`` (the
production profile); no module here imports it.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, needed_for: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.split(".")[0]:
            raise  # the module is there but one of its own imports is not: not ours to explain
        raise MissingExtraError(
            f"{needed_for} needs the '{module}' package, which is not installed: "
            f"pip install 'airrep[{extra}]'") from exc
