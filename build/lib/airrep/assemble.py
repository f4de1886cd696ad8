"""Assemble published pieces (index, records, label and loss arrays) into the shapes the
trainer and the evaluator take, and the LDS table's list of methods."""

from __future__ import annotations

import logging

import numpy as np

from airrep.data import Record, format_record
from airrep.evaluate import BenchmarkData
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
