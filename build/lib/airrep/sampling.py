"""Cross-validation splits, random training subsets and the held-out benchmark.

The corpus is cut by ``group_id`` (never by record) into disjoint regions, in this order:
benchmark test set, benchmark pool, the base-LM pretraining slice, and the training
region from which every cross-validation split draws its dev set and train pool (paper
§3.3). Splits take consecutive groups of one shuffle of the region, so their dev sets and
pools are disjoint from each other's as long as the region holds them all (breadth: every
split brings new texts); past that, the region is shuffled again and later splits overlap
earlier ones, as the paper's 100 splits of one corpus do. A split's dev set and pool never
share a group, and nothing a split sees is in the benchmark.
Everything here is deterministic in the seed and plain JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from airrep.atomic import write_text_atomic
from airrep.config import SamplingConfig
from airrep.data import Record


class SamplingError(ValueError):
    """The corpus cannot provide the requested sizes; the message says what to change."""


@dataclass
class Split:
    """One cross-validation instance: a dev set, a train pool and subsets of that pool."""

    dev: list[str]
    pool: list[str]
    subsets: list[list[str]]


@dataclass
class Benchmark:
    """Held-out LDS benchmark: test examples, a pool, and random subsets of the pool."""

    test: list[str]
    pool: list[str]
    subsets: list[list[str]]


@dataclass
class SubsetIndex:
    """Which records form every dev set, pool, subset and benchmark of a run."""

    seed: int
    corpus_fingerprint: str
    splits: list[Split]
    benchmark: Benchmark
    pretrain: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SubsetIndex:
        raw = json.loads(text)
        return cls(
            seed=raw["seed"],
            corpus_fingerprint=raw["corpus_fingerprint"],
            splits=[Split(**s) for s in raw["splits"]],
            benchmark=Benchmark(**raw["benchmark"]),
            pretrain=raw.get("pretrain", []),
        )

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SubsetIndex:
        return cls.from_json(Path(path).read_text())


def _groups_in_order(records: list[Record], rng: np.random.Generator) -> list[list[str]]:
    """Record ids grouped by ``group_id``, groups in a random order, records in corpus order."""
    by_group: dict[str, list[str]] = {}
    for record in records:
        by_group.setdefault(record.group_id, []).append(record.id)
    names = list(by_group)
    order = rng.permutation(len(names))
    return [by_group[names[i]] for i in order]


def _take(groups: list[list[str]], start: int, count: int) -> tuple[list[str], int]:
    """Take ``count`` ids from whole groups starting at ``groups[start]``.

    The last group taken may contribute only part of its records; its remainder is dropped
    rather than handed to the next region, so no group straddles two regions.
    """
    taken: list[str] = []
    position = start
    while len(taken) < count and position < len(groups):
        taken.extend(groups[position][: count - len(taken)])
        position += 1
    return taken, position


def random_subsets(pool: list[str], n_subsets: int, size: int, rng: np.random.Generator) -> list[list[str]]:
    """``n_subsets`` distinct random subsets of ``size`` ids (each sorted in pool order)."""
    if size > len(pool):
        raise SamplingError(f"subset size {size} is larger than its pool ({len(pool)} records)")
    position = {item: i for i, item in enumerate(pool)}
    seen: set[tuple[str, ...]] = set()
    subsets: list[list[str]] = []
    attempts = 0
    while len(subsets) < n_subsets:
        attempts += 1
        if attempts > 100 * n_subsets:
            raise SamplingError(
                f"could not draw {n_subsets} distinct subsets of {size} from a pool of {len(pool)}; "
                "lower n_subsets or subset_size"
            )
        chosen = rng.choice(len(pool), size=size, replace=False)
        members = tuple(sorted((pool[i] for i in chosen), key=position.__getitem__))
        if members not in seen:
            seen.add(members)
            subsets.append(list(members))
    return subsets


def _shuffled(region: list[list[str]], seed: int, shuffle: int) -> list[list[str]]:
    return [region[i] for i in np.random.default_rng([seed, 2, shuffle]).permutation(len(region))]


def sample_index(
    records: list[Record], config: SamplingConfig, seed: int, corpus_fingerprint: str
) -> SubsetIndex:
    """Cut the corpus into benchmark, pretraining slice and cross-validation splits."""
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise SamplingError("record ids must be unique before sampling")
    rng = np.random.default_rng([seed, 0])
    groups = _groups_in_order(records, rng)
    bench = config.benchmark
    test, cursor = _take(groups, 0, bench.n_test)
    bench_pool, cursor = _take(groups, cursor, bench.n_pool)
    pretrain, cursor = _take(groups, cursor, config.pretrain_size)
    region = groups[cursor:]
    region_size = sum(len(g) for g in region)
    needed = config.n_dev + config.n_pool
    if len(test) < bench.n_test or len(bench_pool) < bench.n_pool or len(pretrain) < config.pretrain_size \
            or region_size < needed:
        raise SamplingError(
            f"the corpus has {len(records)} records in {len(groups)} groups, too few for "
            f"benchmark test {bench.n_test} + benchmark pool {bench.n_pool} + pretraining "
            f"{config.pretrain_size} + one split's dev {config.n_dev} and pool {config.n_pool}; "
            "lower the sampling sizes or use a larger corpus"
        )
    bench_rng = np.random.default_rng([seed, 1])
    benchmark = Benchmark(
        test=test, pool=bench_pool,
        subsets=random_subsets(bench_pool, bench.n_subsets, bench.subset_size, bench_rng),
    )
    splits = []
    passes, cursor = 0, 0
    order = _shuffled(region, seed, passes)
    for k in range(config.n_splits):
        dev, position = _take(order, cursor, config.n_dev)
        pool, cursor = _take(order, position, config.n_pool)
        if len(dev) < config.n_dev or len(pool) < config.n_pool:  # this shuffle is used up: another
            passes += 1
            order = _shuffled(region, seed, passes)
            dev, position = _take(order, 0, config.n_dev)
            pool, cursor = _take(order, position, config.n_pool)
        if len(pool) < config.n_pool:
            raise SamplingError(
                f"split {k}: only {len(pool)} pool records left after the dev set (wanted "
                f"{config.n_pool}); lower sampling.n_dev or sampling.n_pool, or use a larger corpus"
            )
        split_rng = np.random.default_rng([seed, 3, k])
        splits.append(Split(
            dev=dev, pool=pool,
            subsets=random_subsets(pool, config.n_subsets, config.subset_size, split_rng),
        ))
    return SubsetIndex(seed=seed, corpus_fingerprint=corpus_fingerprint, splits=splits,
                       benchmark=benchmark, pretrain=pretrain)
