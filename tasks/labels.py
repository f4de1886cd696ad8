"""Label-generation tasks: sample the index, publish the base LLM, fine-tune one subset, normalize.

``finetune_subset`` is the unit that fans out (thousands per run at paper scale). It is
idempotent: its result is published under a key derived from the base-LLM fingerprint,
the subset's members, the scored examples, the settings and the seed, and a key that is
already published is never recomputed. A crash before publishing loses only that one
fine-tune; a retry or a re-run picks up exactly the missing ones.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
import time
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NONE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from airrep.data import CorpusError, corpus_fingerprint
from airrep.finetune import finetune_and_evaluate
from airrep.keys import base_llm_key, index_key
from airrep.labels import normalize
from airrep.llm import fingerprint, load_base_llm, resolve_base_llm
from airrep.paths import cache_dir, cache_lock
from airrep.plan import FinetuneJob, Stage, stage_jobs
from airrep.sampling import SamplingError, SubsetIndex, sample_index
from tasks.common import records_by_id, store_for, typed


def subset_jobs(config: dict[str, Any], index_key: str, llm_fingerprint: str, stage: Stage) -> list[FinetuneJob]:
    """The fine-tunes of one stage, in the plan's order (:func:`airrep.plan.stage_jobs`)."""
    cfg = typed(config)
    repeats = (cfg.evaluate.noise_ceiling_subsets or len(load_index(config, index_key).benchmark.subsets)) \
        if cfg.evaluate.noise_ceiling else 0
    return stage_jobs(stage, load_index(config, index_key), cfg.finetune, llm_fingerprint, repeats)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (a store hiccup), not bad input: it would fail the same way again."""
    try:
        state.result()
    except (CorpusError, SamplingError):
        return False
    except Exception:
        return True
    return True


@task(cache_policy=NONE, retries=2, retry_delay_seconds=exponential_backoff(2),
      retry_condition_fn=retry_unless_bad_input)
def sample_splits(config: dict[str, Any]) -> dict[str, Any]:
    """Sample the subset index (deterministic in the seed) and publish it; returns its key."""
    cfg = typed(config)
    by_id = records_by_id(cfg)
    records = list(by_id.values())
    corpus_fp = corpus_fingerprint(records)
    key = index_key(corpus_fp, cfg.sampling.model_dump(), cfg.seed)
    store = store_for(cfg)
    if not store.exists(key):
        index = sample_index(records, cfg.sampling, cfg.seed, corpus_fp)
        store.put_bytes(key, index.to_json().encode())
    get_run_logger().info("subset index at %s (corpus %s, %d records)", key, corpus_fp, len(records))
    return {"key": key, "corpus_fingerprint": corpus_fp}


def load_index(config: dict[str, Any], key: str) -> SubsetIndex:
    return SubsetIndex.from_json(store_for(typed(config)).get_bytes(key).decode())


@task(cache_policy=NONE, retries=2, retry_delay_seconds=exponential_backoff(5))
def prepare_base_llm(config: dict[str, Any], index_key: str) -> dict[str, str]:
    """Resolve the base LLM (building the tiny LM if configured), fingerprint it, and publish
    its directory so that workers on other machines load the very same weights."""
    cfg = typed(config)
    index = load_index(config, index_key)
    by_id = records_by_id(cfg)
    path = resolve_base_llm(cfg.base_llm, [by_id[i] for i in index.pretrain], cfg.finetune.max_length, cfg.seed)
    llm_fp = fingerprint(path, cfg.base_llm.revision)
    key = ""
    if cfg.base_llm.name in ("tiny", "smollm2") or _is_dir(path):
        key = base_llm_key(llm_fp)
        store = store_for(cfg)
        if not store.exists(key):
            store.put_dir(key, path)
    get_run_logger().info("base LLM %s, fingerprint %s", path, llm_fp)
    return {"path": path, "fingerprint": llm_fp, "key": key}


def _is_dir(path: str) -> bool:
    from pathlib import Path

    return Path(path).expanduser().is_dir()


_model_lock = threading.Lock()


@functools.lru_cache(maxsize=2)
def _cached_base_model(path: str, base_llm_json: str):
    from airrep.config import BaseLLMConfig

    return load_base_llm(path, BaseLLMConfig.model_validate_json(base_llm_json))


def shared_base_model(config: dict[str, Any], llm: dict[str, str]):
    """The base LLM, loaded once per worker process and shared by its threads (each
    fine-tune copies it). Task bodies call this rather than touching the lock: Dask
    pickles a task's function with the globals it uses, and a lock cannot be pickled."""
    with _model_lock:
        return _cached_base_model(local_llm_path(config, llm), typed(config).base_llm.model_dump_json())


def local_llm_path(config: dict[str, Any], llm: dict[str, str]) -> str:
    """The base LLM on this worker: the producer's path if present, else fetched from the store
    (an empty path: known only by its key, e.g. a registered model's base LLM)."""
    if not llm["key"] or (llm["path"] and _is_dir(llm["path"])):
        return llm["path"]
    target = cache_dir("models", llm["fingerprint"].replace(":", "-"))
    if (target / "config.json").exists():  # every fine-tune asks: no lock once it is here
        return str(target)
    with cache_lock(target):
        if not (target / "config.json").exists():
            store_for(typed(config)).get_dir(llm["key"], target)
    return str(target)


class _ThreadTimeoutWarningOnce(logging.Filter):
    """Lets Prefect's "timeout configured, but the task is running in a worker thread" warning
    through once per process instead of once per fine-tune (thousands per run). The timeout
    itself works for a fine-tune: Prefect raises it in the thread at its next Python step, and
    a training loop takes one every few milliseconds. Only a single long blocking call
    (a stalled download) would outlast it, which is what the warning is about."""

    _PREFIX = "Timeout of %s seconds configured for this task, but the task is running in a worker thread"

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self._PREFIX):
            return True
        first, self.seen = not self.seen, True
        return first


logging.getLogger("prefect.task_runs").addFilter(_ThreadTimeoutWarningOnce())


@task(cache_policy=NONE, retries=3, retry_delay_seconds=exponential_backoff(5), timeout_seconds=3600,
      task_run_name="finetune-{label}")
def finetune_subset(config: dict[str, Any], llm: dict[str, str], key: str, members: list[str], eval_ids: list[str],
                    seed: int, label: str) -> dict[str, Any]:
    """Fine-tune the base LLM on one subset and publish the per-example losses of ``eval_ids``
    under ``key`` (the plan's key for this job)."""
    cfg = typed(config)
    store = store_for(cfg)
    logger = get_run_logger()
    if store.exists(key):
        logger.info("%s: already published at %s, skipped", label, key)
        return {"key": key, "skipped": True, "seconds": 0.0, "tokens_per_second": 0.0}
    by_id = records_by_id(cfg)
    model, tokenizer = shared_base_model(config, llm)
    start = time.perf_counter()
    losses, stats = finetune_and_evaluate(model, tokenizer, [by_id[i] for i in members],
                                          [by_id[i] for i in eval_ids], cfg.finetune, seed)
    store.put_bytes(key, npy_bytes(losses))
    seconds = time.perf_counter() - start
    logger.info("%s: %.1f s, %.0f tokens/s, mean dev loss %.4f", label, seconds, stats.tokens_per_second,
                float(losses.mean()))
    return {"key": key, "skipped": False, "seconds": seconds, "tokens_per_second": stats.tokens_per_second}


@task(cache_policy=NONE, retries=2, retry_delay_seconds=exponential_backoff(2))
def normalize_labels(config: dict[str, Any], dev_ids: list[str], result_keys: list[str], key: str) -> str:
    """Stack one split's fine-tune losses ``(n_subsets, n_dev)`` and publish them with labels at ``key``."""
    cfg = typed(config)
    store = store_for(cfg)
    losses = np.stack([npy_load(store.get_bytes(k)) for k in result_keys])
    buffer = io.BytesIO()
    np.savez(buffer, losses=losses, labels=normalize(losses), dev_ids=np.array(dev_ids))
    store.put_bytes(key, buffer.getvalue())
    return key


def load_label_split(config: dict[str, Any], key: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(store_for(typed(config)).get_bytes(key)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
