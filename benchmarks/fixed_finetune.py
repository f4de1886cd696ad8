"""A fine-tune of fixed, known duration, for the orchestration benchmark.

It stands in for :func:`airrep.finetune.finetune_and_evaluate` inside the real
``finetune_subset`` task and nothing else: the task still checks the store, loads the
corpus and base LLM, publishes the returned losses through the artifact store and logs, and
the fan-out flow around it is unchanged. What remains is what orchestration costs.

The body sleeps for ``$AIRREP_BENCH_FINETUNE_SECONDS`` and returns losses that are a
function of the job's seed alone (:func:`expected_losses`), so the benchmark can check that
every published result is the one its job produced. Each call appends its seed to
``$AIRREP_BENCH_FINETUNE_CALLS`` (one short ``O_APPEND`` write per line, whole even with
many writers), which is how duplicated work is counted rather than assumed absent.

Installed in Dask worker processes by ``preload`` (:func:`dask_setup`); those processes run
only the benchmark's fan-out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from airrep.finetune import FinetuneStats

SECONDS_ENV = "AIRREP_BENCH_FINETUNE_SECONDS"
CALLS_ENV = "AIRREP_BENCH_FINETUNE_CALLS"


def expected_losses(seed: int, n_eval: int) -> np.ndarray:
    """The ``(n_eval,)`` losses the stand-in publishes for the job with ``seed``."""
    return np.random.default_rng(seed).uniform(1.0, 3.0, n_eval).astype(np.float32)


def fixed_finetune(base_model, tokenizer, train_records: Sequence, dev_records: Sequence, config,
                   seed: int | None = None) -> tuple[np.ndarray, FinetuneStats]:
    """``finetune_and_evaluate``'s signature and result shape; sleeps instead of training."""
    seconds = float(os.environ[SECONDS_ENV])
    seed = config.seed if seed is None else seed
    time.sleep(seconds)
    descriptor = os.open(os.environ[CALLS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{seed}\n".encode())
    finally:
        os.close(descriptor)
    return expected_losses(seed, len(dev_records)), FinetuneStats(
        train_tokens=0, train_seconds=seconds, eval_seconds=0.0, final_train_loss=0.0)


def install() -> None:
    """Route this process's ``finetune_subset`` tasks to :func:`fixed_finetune`.

    Both names are replaced: ``tasks.labels``'s for a task run in this process, and
    ``airrep.finetune``'s for one shipped here by Dask. Dask pickles the task's function by
    value, and the module-level functions it calls by reference (module and name), which
    this process looks up again when the task arrives."""
    import airrep.finetune
    import tasks.labels

    airrep.finetune.finetune_and_evaluate = fixed_finetune
    tasks.labels.finetune_and_evaluate = fixed_finetune


def dask_setup(worker) -> None:
    """Dask's preload hook: runs in each worker process before it takes tasks."""
    install()


def read_calls(path: str | os.PathLike[str]) -> list[int]:
    """The seeds of every stand-in call so far, one per call, in call order."""
    try:
        with open(path) as handle:
            return [int(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return []
