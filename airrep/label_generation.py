"""Label generation as plain Python: sample → fine-tune every subset → normalize.

The orchestrated pipeline (``flows/``) runs the same steps as retryable Prefect tasks;
this module holds what both share (content keys and seeds of fine-tunes) and a driver for
running in one process without an orchestrator (notebooks, tests). A fine-tune whose key already has a result
is never recomputed, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from airrep.config import FinetuneConfig, PipelineConfig, save_config
from airrep.data import Record, corpus_fingerprint, load_records
from airrep.finetune import finetune_and_evaluate
from airrep.labels import normalize
from airrep.llm import fingerprint, load_base_llm, resolve_base_llm
from airrep.precision import resolve_precision
from airrep.sampling import SubsetIndex, sample_index

log = logging.getLogger(__name__)


def finetune_key(llm_fingerprint: str, members: list[str], eval_ids: list[str],
                 settings: FinetuneConfig, seed: int) -> str:
    """Content key of one subset fine-tune: same base LLM, data, settings and seed → same losses."""
    payload = {
        "llm": llm_fingerprint,
        "members": sorted(members),
        "eval": list(eval_ids),
        # The precision that ran, not the configured one: ``auto`` gives bf16 or fp32 by machine.
        "settings": {**settings.model_dump(mode="json", exclude={"seed"}),
                     "precision": resolve_precision(settings.precision)},
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def subset_seed(settings: FinetuneConfig, split: int, subset: int) -> int:
    """Each subset gets its own data-order seed, reproducible from its position."""
    return settings.seed * 1_000_003 + split * 10_007 + subset


def benchmark_seed(settings: FinetuneConfig, subset: int, repeat: bool = False) -> int:
    """Data-order seed of a held-out benchmark fine-tune; ``repeat`` is the independent second
    run of the same subset that measures the noise ceiling."""
    base = 1_000_000 + settings.seed
    return (2 * base if repeat else base) + subset


@dataclass
class LabelRun:
    """Where label generation wrote its outputs, and what it did."""

    out_dir: Path
    index: SubsetIndex
    llm_path: str
    llm_fingerprint: str
    split_files: list[Path] = field(default_factory=list)
    computed: int = 0
    skipped: int = 0
    seconds_per_finetune: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)


class FinetuneCache:
    """Finished fine-tunes as ``<key>.npy`` files, written atomically (tmp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        return np.load(path, allow_pickle=False) if path.exists() else None

    def put(self, key: str, losses: np.ndarray) -> None:
        tmp = self.root / f".{key}.tmp.npy"
        np.save(tmp, losses, allow_pickle=False)
        tmp.replace(self.path(key))


def prepare(config: PipelineConfig) -> tuple[dict[str, Record], SubsetIndex, str, str]:
    """Load the corpus, sample the index, and resolve + fingerprint the base LLM."""
    records, report = load_records(config.data)
    by_id = {r.id: r for r in records}
    index = sample_index(records, config.sampling, config.seed, corpus_fingerprint(records))
    pretrain = [by_id[i] for i in index.pretrain]
    llm_path = resolve_base_llm(config.base_llm, pretrain, config.finetune.max_length, config.seed)
    revision = config.base_llm.revision
    return by_id, index, llm_path, fingerprint(llm_path, revision)


@dataclass
class FinetuneJob:
    """One subset fine-tune: train on ``members``, score ``eval_ids``."""

    members: list[str]
    eval_ids: list[str]
    seed: int


class FinetuneRunner:
    """Runs fine-tune jobs against a cache; loads the base LLM only if something must run."""

    def __init__(self, config: PipelineConfig, by_id: dict[str, Record], llm_path: str, llm_fp: str) -> None:
        self.config, self.by_id = config, by_id
        self.llm_path, self.llm_fp = llm_path, llm_fp
        self.cache = FinetuneCache(config.work_path / "finetunes")
        self._model = None
        self.computed = self.skipped = 0
        self.seconds: list[float] = []
        self.tokens_per_second: list[float] = []

    def run(self, jobs: list[FinetuneJob], desc: str) -> list[np.ndarray]:
        results = []
        for job in tqdm(jobs, desc=desc, unit="subset"):
            key = finetune_key(self.llm_fp, job.members, job.eval_ids, self.config.finetune, job.seed)
            losses = self.cache.get(key)
            if losses is None:
                if self._model is None:
                    self._model = load_base_llm(self.llm_path, self.config.base_llm)
                start = time.perf_counter()
                losses, stats = finetune_and_evaluate(
                    *self._model, [self.by_id[i] for i in job.members],
                    [self.by_id[i] for i in job.eval_ids], self.config.finetune, job.seed)
                self.cache.put(key, losses)
                self.computed += 1
                self.seconds.append(time.perf_counter() - start)
                self.tokens_per_second.append(stats.tokens_per_second)
            else:
                self.skipped += 1
            results.append(losses)
        return results


def generate_labels(config: PipelineConfig, out_dir: str | Path | None = None,
                    prepared: tuple | None = None) -> LabelRun:
    """Run every subset fine-tune of every split (skipping finished ones), then normalize."""
    out = Path(out_dir) if out_dir else config.work_path / config.name / "labels"
    out.mkdir(parents=True, exist_ok=True)
    by_id, index, llm_path, llm_fp = prepared or prepare(config)
    save_config(config, out / "config.yaml")
    index.save(out / "index.json")
    run = LabelRun(out_dir=out, index=index, llm_path=llm_path, llm_fingerprint=llm_fp)
    runner = FinetuneRunner(config, by_id, llm_path, llm_fp)
    for k, split in enumerate(index.splits):
        jobs = [FinetuneJob(members, split.dev, subset_seed(config.finetune, k, j))
                for j, members in enumerate(split.subsets)]
        dev_losses = np.stack(runner.run(jobs, f"split {k} fine-tunes"))  # (n_subsets, n_dev)
        path = out / f"split_{k:03d}.npz"
        tmp = out / f".split_{k:03d}.tmp.npz"
        np.savez(tmp, losses=dev_losses, labels=normalize(dev_losses), dev_ids=np.array(split.dev))
        tmp.replace(path)
        run.split_files.append(path)
    run.computed, run.skipped = runner.computed, runner.skipped
    run.seconds_per_finetune, run.tokens_per_second = runner.seconds, runner.tokens_per_second
    log.info("label generation: %d fine-tunes run, %d already finished and skipped",
             run.computed, run.skipped)
    return run


def load_split_labels(path: str | Path) -> dict[str, np.ndarray]:
    """``losses`` and ``labels`` ``(n_subsets, n_dev)`` and ``dev_ids`` of one split."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
