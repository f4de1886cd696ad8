"""The public API: ``attribute`` and ``select`` on a loaded AirRep, and ``airrep select``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import airrep
from airrep.api import as_text, attribute, select
from airrep.data import Record, format_example
from airrep.model import AirRep
from flows.cli import main

COOKING = [
    ("How do I make a fluffy omelette?", "Whisk the eggs hard, cook them on low heat with butter and fold."),
    ("What is the secret to crisp roast potatoes?", "Parboil them, rough up the edges, and roast in hot fat."),
    ("How long should I rest a steak?", "Rest the steak for about five minutes after searing it in the pan."),
    ("How do I keep pasta from sticking?", "Use plenty of boiling salted water and stir the pasta early."),
]
CODE = [
    ("How do I reverse a list in Python?", "Call list.reverse() in place, or use slicing with [::-1]."),
    ("What does git rebase do?", "It replays your commits on top of another branch's history."),
    ("How do I read a file in Rust?", "Use std::fs::read_to_string with the path and handle the Result."),
    ("Why is my SQL query slow?", "Check the query plan and add an index on the filtered column."),
]


@pytest.fixture(scope="module")
def model() -> AirRep:
    """The real pretrained encoder, untrained, with the lexical channel at a known weight."""
    model = AirRep.from_encoder("minilm", layers=3, normalize=True, lexical=True, precision="fp32")
    with torch.no_grad():
        model.model.lexical_weight.fill_(0.5)
    return model


def records(pairs, prefix: str) -> list[Record]:
    return [Record(f"{prefix}{i}", f"{prefix}{i}", p, r) for i, (p, r) in enumerate(pairs)]


def test_every_item_form_is_formatted_as_training_examples_are():
    prompt, response = COOKING[0]
    text = format_example(prompt, response)
    forms = [text, (prompt, response), {"prompt": prompt, "response": response}, {"text": text},
             Record("a", "a", prompt, response)]
    assert [as_text(form) for form in forms] == [text] * len(forms)
    with pytest.raises(TypeError, match="a \\(prompt, response\\) pair"):
        as_text({"question": prompt})


def test_attribute_is_the_top_k_of_the_pair_scores(model):
    corpus = records(COOKING + CODE, "c")
    queries = [("How do I fry an egg?", "Heat butter in a pan and cook the egg on low heat."),
               ("How do I sort a dict by value in Python?", "Use sorted() with a key function on items().")]
    hits = attribute(model, queries, corpus, k=3)
    scores = model.similarity([as_text(q) for q in queries], [as_text(c) for c in corpus])
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(hits.indices, expected)
    np.testing.assert_allclose(hits.scores, np.take_along_axis(scores, expected, axis=1), rtol=1e-5, atol=1e-6)
    assert hits.ids[0][0].startswith("c") and int(hits.ids[0][0][1:]) < len(COOKING)  # an egg: cooking
    assert int(hits.ids[1][0][1:]) >= len(COOKING)  # a Python question: code
    assert model.attribute(queries, corpus, k=3).ids == hits.ids  # the method is the same call


def test_select_takes_the_highest_mean_score_and_picks_the_targets_topic(model):
    targets = [("How do I poach an egg?", "Swirl simmering water, slide the egg in and cook three minutes."),
               ("How do I caramelise onions?", "Cook sliced onions slowly in butter for forty minutes.")]
    candidates = records(CODE[:2] + COOKING + CODE[2:], "x")
    chosen = select(model, targets, candidates, budget=len(COOKING))
    mean = model.similarity([as_text(t) for t in targets], [as_text(c) for c in candidates]).mean(axis=0)
    np.testing.assert_allclose(chosen.scores, mean, rtol=1e-5, atol=1e-6)
    assert sorted(chosen.ids) == sorted(c.id for c in candidates[2:2 + len(COOKING)])
    assert list(chosen.indices) == list(np.argsort(-mean, kind="stable")[: len(COOKING)])
    with pytest.raises(ValueError, match="exceeds the 8 candidates"):
        select(model, targets, candidates, budget=9)
    with pytest.raises(ValueError, match="no targets"):
        select(model, [], candidates, budget=1)


def test_the_package_root_exports_the_api_lazily():
    from airrep import labels, metrics

    assert (airrep.attribute, airrep.select, airrep.AirRep) == (attribute, select, AirRep)
    assert (airrep.lds, airrep.normalize) == (metrics.lds, labels.normalize)
    with pytest.raises(AttributeError):
        airrep.no_such_name  # noqa: B018
    # The CLI's config module loads without torch: the root imports nothing until asked.
    code = "import sys, airrep.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def write_jsonl(path, items: list[Record]) -> None:
    path.write_text("".join(json.dumps({"id": r.id, "prompt": r.prompt, "response": r.response}) + "\n"
                            for r in items))


def test_select_command_writes_the_chosen_ids_as_json_lines(model, tmp_path, capsys):
    saved = tmp_path / "airrep"
    model.save_pretrained(saved)
    write_jsonl(tmp_path / "targets.jsonl", records(COOKING[:2], "t"))
    candidates = records(CODE + COOKING[2:], "x")
    write_jsonl(tmp_path / "candidates.jsonl", candidates)
    out = tmp_path / "chosen.jsonl"
    args = ["select", "--targets", str(tmp_path / "targets.jsonl"), "--candidates",
            str(tmp_path / "candidates.jsonl"), "--budget", "2", "--model", str(saved), "-o", str(out)]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["rank"] for row in rows] == [1, 2]
    assert {row["id"] for row in rows} == {"x4", "x5"}  # the two cooking candidates
    assert rows[0]["score"] >= rows[1]["score"]
    assert "2 of 6 candidates chosen for 2 targets" in capsys.readouterr().err

    assert main([*args[:-2], "--budget", "9"]) == 2
    assert "exceeds the 6 usable candidates" in capsys.readouterr().err
