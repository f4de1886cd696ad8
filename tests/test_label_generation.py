"""Label generation end to end on real ShareGPT text, and a check that the labels carry signal."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from airrep.config import BaseLLMConfig, FinetuneConfig, load_config
from airrep.data import Record
from airrep.finetune import finetune_and_evaluate
from airrep.label_generation import finetune_key, generate_labels, load_split_labels
from airrep.labels import normalize
from airrep.llm import load_base_llm
from airrep.sampling import SubsetIndex

pytestmark = pytest.mark.slow

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def small_config(work_dir: Path, tiny_lm_settings):
    tiny = tiny_lm_settings.config.tiny
    overrides = [
        "sampling.n_splits=2", "sampling.n_dev=30", "sampling.n_pool=120", "sampling.n_subsets=4",
        "sampling.subset_size=40", "sampling.pretrain_size=800",
        "sampling.benchmark.n_test=20", "sampling.benchmark.n_pool=60",
        "sampling.benchmark.n_subsets=4", "sampling.benchmark.subset_size=20",
        f"finetune.max_length={tiny_lm_settings.max_length}",
        f"work_dir={work_dir}",
    ] + [f"base_llm.tiny.{key}={value}" for key, value in tiny.model_dump().items()]
    return load_config(TINY_YAML, overrides, environ={})


def test_generate_labels_end_to_end_and_resume(tmp_path, tiny_lm_settings):
    config = small_config(tmp_path / "work", tiny_lm_settings)
    run = generate_labels(config)

    assert run.computed == 8 and run.skipped == 0
    assert run.out_dir == config.work_path / config.name / "labels"
    index = SubsetIndex.load(run.out_dir / "index.json")
    assert index == run.index
    assert len(index.pretrain) == 800
    assert yaml.safe_load((run.out_dir / "config.yaml").read_text()) == config.model_dump(mode="json")
    assert len(run.split_files) == 2
    for k, path in enumerate(run.split_files):
        assert path.exists() and path.name == f"split_{k:03d}.npz"
        split = load_split_labels(path)
        assert split["losses"].shape == split["labels"].shape == (4, 30)
        assert np.all(np.isfinite(split["losses"])) and np.all(np.isfinite(split["labels"]))
        assert np.all(split["losses"] > 0)
        assert list(split["dev_ids"]) == index.splits[k].dev
        np.testing.assert_allclose(split["labels"], normalize(split["losses"]))
        # Different subsets give different losses: the labels are not all zero.
        assert np.any(split["labels"] != 0)
    assert not set(index.pretrain) & {i for s in index.splits for i in s.dev + s.pool}
    assert len(list((config.work_path / "finetunes").glob("*.npy"))) == 8

    first = [load_split_labels(p)["losses"] for p in run.split_files]
    again = generate_labels(config)
    assert again.computed == 0 and again.skipped == 8
    assert again.llm_fingerprint == run.llm_fingerprint
    for path, losses in zip(again.split_files, first, strict=True):
        np.testing.assert_array_equal(load_split_labels(path)["losses"], losses)

    # An interrupted run resumes: only the missing fine-tune is recomputed, to the same losses.
    split0 = index.splits[0]
    key = finetune_key(run.llm_fingerprint, split0.subsets[2], split0.dev, config.finetune, 2)
    (config.work_path / "finetunes" / f"{key}.npy").unlink()
    resumed = generate_labels(config)
    assert resumed.computed == 1 and resumed.skipped == 7
    np.testing.assert_allclose(load_split_labels(resumed.split_files[0])["losses"], first[0], rtol=1e-6)


def near_copy(record: Record) -> Record:
    """The same example with the response's last word dropped, under a new id."""
    return Record(id=f"copy-{record.id}", group_id=f"copy-{record.group_id}",
                  prompt=record.prompt, response=record.response.rsplit(None, 1)[0])


def test_labels_mean_something(pretrained_tiny_lm, heldout_records):
    """Fine-tuning on near-copies of some dev examples lowers exactly their losses."""
    rng = np.random.default_rng(0)
    candidates = [heldout_records[i] for i in rng.permutation(len(heldout_records))]
    dev: list[Record] = []
    for record in candidates:
        if len(record.response.split()) >= 8 and record.group_id not in {r.group_id for r in dev}:
            dev.append(record)
        if len(dev) == 40:
            break
    dev_groups = {r.group_id for r in dev}
    others = [r for r in candidates if r.group_id not in dev_groups][:140]
    subset_a = others[:60] + [near_copy(r) for r in dev[:20]]
    subset_b = others[60:140]
    assert len(subset_a) == len(subset_b) == 80

    model, tokenizer = load_base_llm(str(pretrained_tiny_lm), BaseLLMConfig())
    settings = FinetuneConfig(epochs=3, lr=1e-3, batch_size=16, max_length=128, precision="bf16")
    loss_a, _ = finetune_and_evaluate(model, tokenizer, subset_a, dev, settings)
    loss_b, _ = finetune_and_evaluate(model, tokenizer, subset_b, dev, settings)

    drop = loss_b - loss_a  # (n_dev,): how much more subset A helped than subset B
    copied, untouched = drop[:20], drop[20:]
    standard_error = untouched.std(ddof=1) / np.sqrt(len(untouched))
    assert copied.mean() - untouched.mean() > max(0.1, 4 * standard_error), (copied, untouched)
    assert np.mean(copied > np.median(untouched)) >= 0.8

    labels = normalize(np.stack([loss_a, loss_b]))  # (2 subsets, 40 dev)
    a_better = labels[0] > labels[1]
    assert a_better[:20].mean() >= 0.9
    assert a_better[:20].mean() > a_better[20:].mean()
    assert labels[0, :20].mean() > labels[0, 20:].mean()
