"""What every task shares: the config travels as a plain dict, the store is opened per task.

Tasks receive the config as a JSON-able dict (so Dask and Kubernetes workers get it
unchanged) and rebuild the typed object; they open the artifact store from the config's
URI, with credentials from the worker's environment.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from airrep.config import PipelineConfig
from airrep.corpora import load_records
from airrep.data import Record
from infra.storage import ArtifactStore, open_store


def typed(config: dict[str, Any] | PipelineConfig) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else PipelineConfig.model_validate(config)


def store_for(config: PipelineConfig) -> ArtifactStore:
    return open_store(config.storage.uri, max_attempts=config.storage.max_attempts)


@functools.lru_cache(maxsize=4)
def _records(data_json: str) -> dict[str, Record]:
    from airrep.config import DataConfig

    records, _ = load_records(DataConfig.model_validate_json(data_json))
    return {r.id: r for r in records}


# lru_cache lets threads that miss at once each compute the value: tasks run as threads (the
# in-process runner, a thread pool) would all parse the corpus at the same time.
_RECORDS_LOCK = threading.Lock()


def records_by_id(config: PipelineConfig) -> dict[str, Record]:
    """The cleaned corpus, loaded once per worker process (it is deterministic in the config)."""
    with _RECORDS_LOCK:
        return _records(config.data.model_dump_json())
