"""A check that the labels carry signal: fine-tuning on near-copies lowers exactly their losses.

(Label generation end to end, with resume, runs through the flows: tests/flows/test_pipeline.py
and tests/faults/test_crash_resume.py; its plan is tested in tests/test_plan.py.)"""

import numpy as np
import pytest

from airrep.config import BaseLLMConfig, FinetuneConfig
from airrep.data import Record
from airrep.finetune import finetune_and_evaluate
from airrep.labels import normalize
from airrep.llm import load_base_llm

pytestmark = pytest.mark.slow

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
