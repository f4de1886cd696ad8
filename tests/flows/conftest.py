"""Flow tests run on the real default stack: Prefect's local API (one per session, started
by ``prefect_api`` in tests/conftest.py), MLflow on sqlite with its registry, artifacts on a
moto S3 server over HTTP, and the micro config of the tiny pipeline."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _on_prefect(prefect_api: None) -> None:
    """Every flow test talks to the session's Prefect API."""
