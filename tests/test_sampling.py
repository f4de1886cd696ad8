import pytest

from airrep.config import BenchmarkSamplingConfig, SamplingConfig
from airrep.data import Record, corpus_fingerprint
from airrep.sampling import SamplingError, SubsetIndex, random_subsets, sample_index

CONFIG = SamplingConfig(
    n_splits=3, n_dev=60, n_pool=240, n_subsets=6, subset_size=80, pretrain_size=300,
    benchmark=BenchmarkSamplingConfig(n_test=50, n_pool=200, n_subsets=5, subset_size=60),
)


@pytest.fixture(scope="module")
def index(sharegpt_records) -> SubsetIndex:
    return sample_index(sharegpt_records, CONFIG, seed=3, corpus_fingerprint="fp")


@pytest.fixture(scope="module")
def group_of(sharegpt_records) -> dict[str, str]:
    return {r.id: r.group_id for r in sharegpt_records}


def groups(ids, group_of) -> set[str]:
    return {group_of[i] for i in ids}


def test_same_seed_same_index_other_seed_other_index(sharegpt_records, index):
    again = sample_index(sharegpt_records, CONFIG, seed=3, corpus_fingerprint="fp")
    assert again == index
    other = sample_index(sharegpt_records, CONFIG, seed=4, corpus_fingerprint="fp")
    assert other.benchmark.test != index.benchmark.test
    assert other.pretrain != index.pretrain
    for mine, theirs in zip(index.splits, other.splits, strict=True):
        assert mine.dev != theirs.dev and mine.subsets != theirs.subsets


def test_sizes_and_ids_are_real(sharegpt_records, index):
    known = {r.id for r in sharegpt_records}
    assert len(index.benchmark.test) == CONFIG.benchmark.n_test
    assert len(index.benchmark.pool) == CONFIG.benchmark.n_pool
    assert len(index.pretrain) == CONFIG.pretrain_size
    assert len(index.splits) == CONFIG.n_splits
    for split in index.splits:
        assert len(split.dev) == CONFIG.n_dev and len(split.pool) == CONFIG.n_pool
    everything = index.benchmark.test + index.benchmark.pool + index.pretrain
    everything += [i for s in index.splits for i in s.dev + s.pool]
    assert set(everything) <= known
    for ids in [index.benchmark.test, index.benchmark.pool, index.pretrain,
                *[s.dev for s in index.splits], *[s.pool for s in index.splits]]:
        assert len(set(ids)) == len(ids)


def test_dev_and_pool_of_each_split_share_no_group(index, group_of):
    for split in index.splits:
        assert not groups(split.dev, group_of) & groups(split.pool, group_of)


def test_benchmark_and_pretrain_are_held_out_from_every_split_and_each_other(index, group_of):
    test = groups(index.benchmark.test, group_of)
    bench_pool = groups(index.benchmark.pool, group_of)
    pretrain = groups(index.pretrain, group_of)
    assert not test & bench_pool
    assert not test & pretrain
    assert not bench_pool & pretrain
    for split in index.splits:
        seen = groups(split.dev + split.pool, group_of)
        assert not seen & test
        assert not seen & bench_pool
        assert not seen & pretrain


def test_splits_differ(index):
    devs = [tuple(s.dev) for s in index.splits]
    assert len(set(devs)) == len(devs)


def test_subsets_are_distinct_sized_and_drawn_from_their_pool(index):
    cases = [(s.pool, s.subsets, CONFIG.n_subsets, CONFIG.subset_size) for s in index.splits]
    bench = CONFIG.benchmark
    cases.append((index.benchmark.pool, index.benchmark.subsets, bench.n_subsets, bench.subset_size))
    for pool, subsets, n_subsets, size in cases:
        assert len(subsets) == n_subsets
        assert len({frozenset(s) for s in subsets}) == n_subsets
        position = {item: i for i, item in enumerate(pool)}
        for subset in subsets:
            assert len(subset) == len(set(subset)) == size
            assert set(subset) <= set(pool)
            assert [position[i] for i in subset] == sorted(position[i] for i in subset)


def test_json_round_trip(index, tmp_path):
    assert SubsetIndex.from_json(index.to_json()) == index
    index.save(tmp_path / "index.json")
    assert SubsetIndex.load(tmp_path / "index.json") == index
    assert not list(tmp_path.glob("*.tmp"))


def test_too_small_corpus_says_what_to_lower(sharegpt_records):
    small = sharegpt_records[:500]
    with pytest.raises(SamplingError) as err:
        sample_index(small, CONFIG, seed=0, corpus_fingerprint=corpus_fingerprint(small))
    message = str(err.value)
    assert "lower the sampling sizes" in message
    assert "500 records" in message


def test_duplicate_ids_are_refused():
    records = [Record(id="a", group_id="a", prompt="p", response="r")] * 2
    with pytest.raises(SamplingError, match="unique"):
        sample_index(records, CONFIG, seed=0, corpus_fingerprint="fp")


def test_groups_are_never_cut_between_regions():
    """A synthetic corpus of 3-record groups: every group lands in exactly one region of a split."""
    records = [Record(id=f"g{g}_{k}", group_id=f"g{g}", prompt="p", response="r")
               for g in range(400) for k in range(3)]
    config = SamplingConfig(
        n_splits=2, n_dev=20, n_pool=100, n_subsets=3, subset_size=10, pretrain_size=50,
        benchmark=BenchmarkSamplingConfig(n_test=20, n_pool=40, n_subsets=2, subset_size=10),
    )
    index = sample_index(records, config, seed=0, corpus_fingerprint="fp")
    group_of = {r.id: r.group_id for r in records}
    regions = [index.benchmark.test, index.benchmark.pool, index.pretrain]
    for split in index.splits:
        assert not groups(split.dev, group_of) & groups(split.pool, group_of)
        for region in regions:
            assert not groups(split.dev + split.pool, group_of) & groups(region, group_of)
    for a in range(3):
        for b in range(a + 1, 3):
            assert not groups(regions[a], group_of) & groups(regions[b], group_of)


def test_random_subsets_cannot_exceed_the_pool_or_repeat():
    import numpy as np

    with pytest.raises(SamplingError, match="larger than its pool"):
        random_subsets(["a", "b"], 2, 3, np.random.default_rng(0))
    # Only one subset of size 2 exists in a pool of 2: a second distinct one is impossible.
    with pytest.raises(SamplingError, match="lower n_subsets or subset_size"):
        random_subsets(["a", "b"], 2, 2, np.random.default_rng(0))


def test_splits_are_disjoint_while_the_region_holds_them(index):
    """Breadth: each split brings new texts until the training region is used up."""
    seen: set[str] = set()
    for split in index.splits:
        ids = set(split.dev) | set(split.pool)
        assert not ids & seen
        seen |= ids


def test_splits_overlap_only_past_what_the_region_holds(sharegpt_records):
    region = len(sharegpt_records) - 50 - 200 - 300
    per_split = 60 + 240
    config = CONFIG.model_copy(update={"n_splits": region // per_split + 3})
    index = sample_index(sharegpt_records, config, seed=3, corpus_fingerprint="fp")
    first = index.splits[: region // per_split - 1]  # partial groups at a split's edge cost a few records
    seen = [set(s.dev) | set(s.pool) for s in first]
    assert sum(len(s) for s in seen) == len(set().union(*seen))
    later = set(index.splits[-1].dev) | set(index.splits[-1].pool)
    assert later & set().union(*seen)  # past the region: a new shuffle, overlapping earlier splits
    for split in index.splits:
        assert len(split.pool) == 240 and not set(split.dev) & set(split.pool)
