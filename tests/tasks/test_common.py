"""Tasks running as threads share one parse of the corpus."""

import functools
import threading
import time

import tasks.common
from airrep.config import load_config


def test_threads_that_ask_at_once_load_the_corpus_once(monkeypatch):
    loads = []

    def slow_load(data_json: str) -> dict:
        loads.append(data_json)
        time.sleep(0.2)  # long enough for every thread to miss the cache without the lock
        return {}

    monkeypatch.setattr(tasks.common, "_records", functools.lru_cache(maxsize=4)(slow_load))
    config = load_config("tiny")
    threads = [threading.Thread(target=tasks.common.records_by_id, args=(config,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
