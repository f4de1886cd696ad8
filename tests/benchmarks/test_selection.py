"""The data-selection benchmark's core on a micro corpus of task-labelled records: every method
selects its budget from the candidates, nothing drawn touches a group the index uses, random
draws anew per seed, and a re-run is served from the fine-tune store."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoTokenizer, BertConfig

from airrep.api import select
from airrep.config import load_config
from airrep.corpora import natural_instruction_records
from airrep.model import AirRep, AirRepConfig, AirRepModel, resolve_encoder
from airrep.sampling import Benchmark, Split, SubsetIndex
from benchmarks.selection import (
    METHODS,
    FinetuneCache,
    SelectionSizes,
    run_selection,
    selection_scorers,
    used_groups,
    write_report,
)
from infra.storage import open_store

WORDS = "red blue green stone river cloud apple paper glass quiet north seven".split()
SIZES = SelectionSizes(tasks=2, targets=6, eval=8, candidates=40, budget=10, seeds=2)


def _task_records():
    """Three small tasks in the Natural Instructions format; every fifth input is asked twice
    (two records, one group), so group-level exclusion is exercised."""
    rng = np.random.default_rng(0)
    tasks = {
        "subtask001_reverse": ("Reverse the words.", lambda w: " ".join(reversed(w))),
        "subtask002_count": ("How many words are there?", lambda w: str(len(w))),
        "subtask004_first": ("Give the first word.", lambda w: w[0]),
    }
    records = []
    for task, (prompt, answer) in tasks.items():
        examples = []
        for i in range(45):
            words = list(rng.choice(WORDS, size=int(rng.integers(2, 6))))
            examples.append({"input": " ".join(words), "target": answer(words)})
            if i % 5 == 0:
                examples.append({"input": " ".join(words), "target": answer(words) + "."})
        records += natural_instruction_records(task, {"task_prefix": f"Prompt: {prompt}", "examples": examples}, task)
    return records


def _index(records) -> SubsetIndex:
    """An index that trains on every fourth record of each task and benchmarks a few more."""
    ids = [r.id for r in records]
    train = ids[::4]
    return SubsetIndex(seed=0, corpus_fingerprint="micro", splits=[Split(train[:10], train[10:], [train[10:20]])],
                       benchmark=Benchmark(ids[1:6], ids[6:9], [ids[6:8]]))


def _tiny_airrep() -> AirRep:
    torch.manual_seed(0)
    encoder = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=30522)
    model = AirRep(AirRepModel(AirRepConfig(encoder=encoder.to_dict(), max_tokens=32, lexical=True)),
                   AutoTokenizer.from_pretrained(resolve_encoder("minilm")), precision="fp32")
    with torch.no_grad():
        model.model.lexical_weight.fill_(2.0)
    return model


def test_every_method_selects_its_budget_from_unused_groups(tiny_random_lm, tmp_path):
    records = _task_records()
    by_id = {r.id: r for r in records}
    index = _index(records)
    excluded = used_groups(index, by_id)
    config = load_config("configs/tiny.yaml", ["evaluate.gradient_proj_dim={logra: 16}", "finetune.max_length=64",
                                               "finetune.epochs=1"], environ={})
    trained = _tiny_airrep()
    scorers = selection_scorers(config, trained, str(tiny_random_lm.path))
    finetunes = FinetuneCache(open_store(str(tmp_path / "store")), tiny_random_lm.model, tiny_random_lm.tokenizer,
                              "micro-lm", config.finetune)
    results = run_selection(by_id, excluded, scorers, finetunes, SIZES, seed=0)

    assert list(results["mean"]) == ["base_loss", *METHODS]
    candidates = set(results["candidates"])
    assert len(candidates) == SIZES.candidates
    drawn = set(candidates)
    for task in results["tasks"]:
        targets, held_out = set(task["targets"]), set(task["eval"])
        assert len(targets) == SIZES.targets and len(held_out) == SIZES.eval
        groups = {by_id[i].group_id for i in targets | held_out}
        assert not groups & {by_id[i].group_id for i in candidates}  # no group both seen and selectable
        assert not {by_id[i].group_id for i in targets} & {by_id[i].group_id for i in held_out}
        assert all(by_id[i].label == task["task"] for i in targets | held_out)
        drawn |= targets | held_out
        for name in METHODS:
            result = task["methods"][name]
            for selection in result["selections"]:
                assert len(selection) == len(set(selection)) == SIZES.budget and set(selection) <= candidates
            assert len(result["losses"]) == SIZES.seeds and np.isfinite(result["losses"]).all()
            assert 0 <= result["target_fraction"] <= 1
        first, second = task["methods"]["random"]["selections"]
        assert set(first) != set(second)  # a new random draw per seed
        expected = select(trained, [by_id[i] for i in task["targets"]], [by_id[i] for i in results["candidates"]],
                          SIZES.budget)
        assert set(task["methods"]["airrep"]["selections"][0]) == set(expected.ids)  # the public API's choice
    used_ids = {*index.benchmark.test, *index.benchmark.pool, *(i for s in index.splits for i in (*s.dev, *s.pool))}
    assert not drawn & used_ids
    assert not {by_id[i].group_id for i in drawn} & excluded
    assert excluded == {by_id[i].group_id for i in used_ids}
    assert results["finetunes_computed"] > 0

    again = run_selection(by_id, excluded, scorers, FinetuneCache(finetunes.store, tiny_random_lm.model,
                                                                  tiny_random_lm.tokenizer, "micro-lm",
                                                                  config.finetune), SIZES, seed=0)
    assert again["finetunes_computed"] == 0  # every fine-tune is read back from the store
    assert again["tasks"][0]["methods"]["airrep"]["losses"] == results["tasks"][0]["methods"]["airrep"]["losses"]

    report = tmp_path / "RESULTS.md"
    report.write_text("# Benchmark results\n\n## Setting\n\ntext\n\n## Reading the results\n\nmore\n")
    results.update(model={"registered": "airrep-micro", "version": "1", "model_key": "models/m"}, seconds=60.0)
    for _ in range(2):  # the second run replaces the section
        write_report(results, tmp_path, report)
    text = report.read_text()
    assert text.count("## Data selection (Natural Instructions)") == 1
    assert text.index("## Setting") < text.index("## Data selection") < text.index("## Reading the results")
    mean = results["mean"]["airrep"]
    assert f"**{mean['mean']:.3f}** ± {mean['std']:.3f}" in text
    assert (tmp_path / "selection.png").stat().st_size > 1000
