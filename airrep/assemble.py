"""Assemble published pieces (index, records, label and loss arrays) into the shapes the
trainer and the evaluator take, and the LDS table's list of methods."""

from __future__ import annotations

import logging

import numpy as np

from airrep.config import PipelineConfig
from airrep.data import Record, format_record
from airrep.evaluate import (
    BenchmarkData,
    embedding_scores,
    tfidf_scores,
)
from airrep.model import AirRep
from airrep.sampling import SubsetIndex
from airrep.train import TrainingSplit

log = logging.getLogger(__name__)


def training_splits(index: SubsetIndex, by_id: dict[str, Record],
                    split_labels: list[dict[str, np.ndarray]]) -> list[TrainingSplit]:
    """The labelled splits in the shape the trainer wants (texts + index arrays)."""
    splits = []
    for split, data in zip(index.splits, split_labels, strict=True):
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
    if trained.lexical_weight is not None:  # the two terms of a lexical AirRep's score, each alone
        if poolings("airrep-dense"):
            methods["airrep-dense"] = (lambda t, p: embedding_scores(trained, t, p, lexical=False),
                                       poolings("airrep-dense"))
        if poolings("airrep-lexical"):
            methods["airrep-lexical"] = (lambda t, p: _scaled(tfidf_scores(t, p), trained.lexical_weight),
                                         poolings("airrep-lexical"))
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


def _scaled(scores: tuple[np.ndarray, int], weight: float) -> tuple[np.ndarray, int]:
    return scores[0] * weight, scores[1]


def _gradient_method(name: str, config: PipelineConfig, llm_path: str):
    def score(test, pool):
        from airrep.baselines.gradient import gradient_scores
        from airrep.llm import load_base_llm

        model, tokenizer = load_base_llm(llm_path, config.base_llm)
        result = gradient_scores(name, model, tokenizer, pool, test,
                                 max_length=config.evaluate.gradient_max_length,
                                 proj_dim=config.evaluate.gradient_proj_dim.get(name), seed=config.seed)
        return result.scores, result.dim
    return score
