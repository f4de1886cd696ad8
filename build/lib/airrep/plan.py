"""The label-generation plan: every fine-tune a run needs, with its seed and artifact key.

A pure function of the sampled index, the fine-tune settings and the base LLM's
fingerprint, so the flows, the benchmarks and any notebook that reads a run's results lay
it out the same way. Prefect tasks (``tasks/labels.py``) only fetch inputs, run a job and
publish under its key; nothing else decides seeds or keys.

Seeds: a split's subset ``j`` of split ``k`` trains with ``seed·1000003 + k·10007 + j``; a
held-out subset ``j`` with ``1000000 + seed + j``, and its independent second fine-tune
(the noise ceiling) with ``2·(1000000 + seed) + j``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from airrep.config import FinetuneConfig
from airrep.keys import finetune_key, label_key, label_run_key
from airrep.precision import resolve_precision
from airrep.sampling import SubsetIndex

Stage = Literal["labels", "benchmark"]


@dataclass(frozen=True)
class FinetuneJob:
    """Fine-tune on ``members``, score ``eval_ids``, publish the losses under ``key``."""

    key: str
    members: list[str]
    eval_ids: list[str]
    seed: int
    label: str  # for logs and task names: ``split3-subset7``, ``benchmark-repeat2``


def subset_seed(settings: FinetuneConfig, split: int, subset: int) -> int:
    """Each subset gets its own data-order seed, reproducible from its position."""
    return settings.seed * 1_000_003 + split * 10_007 + subset


def benchmark_seed(settings: FinetuneConfig, subset: int, repeat: bool = False) -> int:
    """Data-order seed of a held-out benchmark fine-tune; ``repeat`` is the independent second
    run of the same subset that measures the noise ceiling."""
    base = 1_000_000 + settings.seed
    return (2 * base if repeat else base) + subset


def settings_as_run(settings: FinetuneConfig) -> dict:
    """The fine-tune settings that a key records: the precision that runs on this machine
    (``auto`` resolves to bf16 or fp32), without the settings' own seed (each job has one)."""
    return {**settings.model_dump(mode="json", exclude={"seed"}), "precision": resolve_precision(settings.precision)}


def job(llm_fingerprint: str, settings: FinetuneConfig, members: list[str], eval_ids: list[str], seed: int,
        label: str) -> FinetuneJob:
    key = finetune_key(llm_fingerprint, members, eval_ids, settings_as_run(settings), seed)
    return FinetuneJob(key, list(members), list(eval_ids), seed, label)


def label_jobs(index: SubsetIndex, settings: FinetuneConfig, llm_fingerprint: str) -> list[list[FinetuneJob]]:
    """Per split, its subsets' fine-tunes in order, each scored on the split's dev set."""
    return [[job(llm_fingerprint, settings, members, split.dev, subset_seed(settings, k, j), f"split{k}-subset{j}")
             for j, members in enumerate(split.subsets)]
            for k, split in enumerate(index.splits)]


def benchmark_jobs(index: SubsetIndex, settings: FinetuneConfig, llm_fingerprint: str,
                   repeats: int = 0) -> tuple[list[FinetuneJob], list[FinetuneJob]]:
    """The held-out subsets' fine-tunes scored on the test set, and the second, independently
    seeded fine-tune of the first ``repeats`` of them (the noise ceiling)."""
    bench = index.benchmark
    first = [job(llm_fingerprint, settings, m, bench.test, benchmark_seed(settings, j), f"benchmark-subset{j}")
             for j, m in enumerate(bench.subsets)]
    again = [job(llm_fingerprint, settings, m, bench.test, benchmark_seed(settings, j, repeat=True),
                 f"benchmark-repeat{j}") for j, m in enumerate(bench.subsets[:repeats])]
    return first, again


def stage_jobs(stage: Stage, index: SubsetIndex, settings: FinetuneConfig, llm_fingerprint: str,
               repeats: int = 0) -> list[FinetuneJob]:
    """One fan-out's jobs in a fixed order: ``labels`` split by split; ``benchmark`` the held-out
    subsets, then their repeats."""
    if stage == "labels":
        return [j for split in label_jobs(index, settings, llm_fingerprint) for j in split]
    if stage == "benchmark":
        first, again = benchmark_jobs(index, settings, llm_fingerprint, repeats)
        return first + again
    raise ValueError(f"unknown fine-tune stage {stage!r}: 'labels' or 'benchmark'")


def label_keys(index: SubsetIndex, index_key: str, settings: FinetuneConfig, llm_fingerprint: str) -> list[str]:
    """Where each split's normalised labels are published."""
    run = label_run_key(index_key, llm_fingerprint, settings.model_dump(mode="json"))
    return [label_key(run, k) for k in range(len(index.splits))]
