"""The label-generation plan: jobs, seeds and keys, as pure functions of the index and settings."""

import pytest

from airrep.config import FinetuneConfig
from airrep.keys import label_key
from airrep.plan import benchmark_jobs, label_jobs, label_keys, stage_jobs
from airrep.sampling import Benchmark, Split, SubsetIndex


def _index() -> SubsetIndex:
    splits = [Split(dev=[f"d{k}{i}" for i in range(3)], pool=[f"p{k}{i}" for i in range(6)],
                         subsets=[[f"p{k}{i}" for i in range(j, j + 2)] for j in range(4)]) for k in range(2)]
    bench = Benchmark(test=["t0", "t1"], pool=[f"b{i}" for i in range(6)],
                           subsets=[[f"b{j}", f"b{j + 1}"] for j in range(3)])
    return SubsetIndex(seed=0, corpus_fingerprint="c", splits=splits, benchmark=bench)


def test_every_label_fine_tune_once_with_its_own_seed_and_key():
    settings = FinetuneConfig()
    plan = label_jobs(_index(), settings, "llm-a")
    assert [len(split) for split in plan] == [4, 4]
    jobs = [j for split in plan for j in split]
    assert len({j.key for j in jobs}) == len({j.seed for j in jobs}) == 8
    assert all(j.eval_ids == _index().splits[k].dev for k, split in enumerate(plan) for j in split)
    assert [j.label for j in plan[1]][:2] == ["split1-subset0", "split1-subset1"]
    assert all(j.key.startswith("finetunes/") and j.key.endswith(".npy") for j in jobs)
    assert stage_jobs("labels", _index(), settings, "llm-a") == jobs  # deterministic, split by split


def test_keys_follow_what_changes_the_losses():
    settings = FinetuneConfig()
    base = label_jobs(_index(), settings, "llm-a")[0][0].key
    assert label_jobs(_index(), settings, "llm-b")[0][0].key != base  # another base LLM
    assert label_jobs(_index(), settings.model_copy(update={"lr": 1e-3}), "llm-a")[0][0].key != base
    assert label_jobs(_index(), settings.model_copy(update={"seed": 1}), "llm-a")[0][0].key != base  # new seeds
    index = _index()
    index.splits[0].subsets[0] = list(reversed(index.splits[0].subsets[0]))  # member order does not matter
    assert label_jobs(index, settings, "llm-a")[0][0].key == base


def test_benchmark_repeats_are_independent_fine_tunes_of_the_first_subsets():
    settings = FinetuneConfig()
    first, again = benchmark_jobs(_index(), settings, "llm-a", repeats=2)
    assert len(first) == 3 and len(again) == 2
    assert [j.members for j in again] == [j.members for j in first[:2]]
    assert {j.seed for j in again}.isdisjoint({j.seed for j in first})
    assert {j.key for j in again}.isdisjoint({j.key for j in first})
    assert stage_jobs("benchmark", _index(), settings, "llm-a", 2) == first + again
    with pytest.raises(ValueError, match="unknown fine-tune stage"):
        stage_jobs("pretrain", _index(), settings, "llm-a")


def test_label_keys_one_per_split_under_one_run():
    keys = label_keys(_index(), "index/x.json", FinetuneConfig(), "llm-a")
    assert len(keys) == 2 and keys[1].endswith("split_001.npz")
    assert keys[0].rsplit("/", 1)[0] == keys[1].rsplit("/", 1)[0]
    assert keys != label_keys(_index(), "index/x.json", FinetuneConfig(), "llm-b")
    assert keys[0] == label_key(keys[0].split("/")[1], 0)
