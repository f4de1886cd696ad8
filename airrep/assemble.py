"""The whole pipeline in one process, without an orchestrator.

sample → fine-tune subsets → normalize → train AirRep → build benchmark → evaluate.
Used by ``airrep run --local`` and by tests; the Prefect flows call the same functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from airrep.config import PipelineConfig, save_config
from airrep.data import Record, format_record
from airrep.evaluate import BenchmarkData, LDSTable, embedding_scores, evaluate_methods, group_lds, tfidf_scores
from airrep.label_generation import FinetuneRunner, benchmark_losses, generate_labels, load_split_labels, prepare
from airrep.model import AirRep
from airrep.sampling import SubsetIndex
from airrep.train import TrainingCurve, TrainingSplit, train_airrep

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    out_dir: Path
    model_dir: Path
    table: LDSTable
    curve: TrainingCurve
    artifacts: dict[str, Path]
    llm_fingerprint: str
    finetunes_computed: int
    finetunes_skipped: int


def training_splits(index: SubsetIndex, by_id: dict[str, Record], label_files: list[Path]) -> list[TrainingSplit]:
    """The labelled splits in the shape the trainer wants (texts + index arrays)."""
    splits = []
    for split, path in zip(index.splits, label_files, strict=True):
        data = load_split_labels(path)
        position = {rid: i for i, rid in enumerate(split.pool)}
        splits.append(TrainingSplit(
            dev_texts=[format_record(by_id[i]) for i in split.dev],
            pool_texts=[format_record(by_id[i]) for i in split.pool],
            subsets=np.array([[position[m] for m in members] for members in split.subsets]),
            labels=data["labels"],
        ))
    return splits


def benchmark_data(index: SubsetIndex, by_id: dict[str, Record], losses: np.ndarray,
                   repeat: np.ndarray | None) -> BenchmarkData:
    bench = index.benchmark
    position = {rid: i for i, rid in enumerate(bench.pool)}
    return BenchmarkData(
        test=[by_id[i] for i in bench.test], pool=[by_id[i] for i in bench.pool],
        subsets=np.array([[position[m] for m in members] for members in bench.subsets]),
        losses=losses, losses_repeat=repeat,
    )


def build_methods(config: PipelineConfig, trained: AirRep, llm_path: str) -> dict:
    """The LDS table's methods, by name (see ``EvaluateConfig.methods``)."""
    wanted = set(config.evaluate.methods)
    methods: dict = {}

    def poolings(name: str) -> tuple:
        return tuple(p for p, row in (("attention", name), ("sum", f"{name}-sum")) if row in wanted)

    if poolings("airrep"):
        methods["airrep"] = (lambda t, p: embedding_scores(trained, t, p), poolings("airrep"))
    if poolings("encoder"):
        untrained = AirRep.from_encoder(config.train.encoder, precision=config.train.precision)
        untrained.model.config.max_tokens = config.train.max_tokens
        methods["encoder"] = (lambda t, p: embedding_scores(untrained, t, p), poolings("encoder"))
    if poolings("tfidf"):
        methods["tfidf"] = (tfidf_scores, poolings("tfidf"))
    for name in ("logra", "tracin", "trak"):
        if name in wanted or f"{name}-sum" in wanted:
            methods[name] = (_gradient_method(name, config, llm_path), ("sum",))
    return methods


def _gradient_method(name: str, config: PipelineConfig, llm_path: str):
    def score(test, pool):
        from airrep.baselines.gradient import gradient_scores
        from airrep.llm import load_base_llm

        model, tokenizer = load_base_llm(llm_path, config.base_llm)
        result = gradient_scores(name, model, tokenizer, pool, test,
                                 max_length=config.evaluate.gradient_max_length, seed=config.seed)
        return result.scores, result.dim
    return score


def run_all(config: PipelineConfig) -> RunResult:
    out = config.work_path / config.name
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    prepared = prepare(config)
    by_id, index, llm_path, llm_fp = prepared
    labels = generate_labels(config, out / "labels", prepared=prepared)
    runner = FinetuneRunner(config, by_id, llm_path, llm_fp)
    losses, repeat = benchmark_losses(config, runner, index, config.evaluate.noise_ceiling)
    bench = benchmark_data(index, by_id, losses, repeat)
    np.savez(out / "benchmark_losses.npz", losses=losses, **({"repeat": repeat} if repeat is not None else {}))

    def held_out_lds(model: AirRep) -> float:
        sims, _ = embedding_scores(model, bench.test, bench.pool)
        return group_lds(sims, bench, "attention")

    model_dir = out / "model"
    trained, curve = train_airrep(training_splits(index, by_id, labels.split_files), config.train,
                                  out_dir=model_dir, evaluate=held_out_lds)
    table = evaluate_methods(bench, build_methods(config, trained, llm_path))
    artifacts = table.save(out / "evaluation")
    return RunResult(out, model_dir, table, curve, artifacts, llm_fp,
                     labels.computed + runner.computed, labels.skipped + runner.skipped)
