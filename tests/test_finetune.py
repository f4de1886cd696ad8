import copy
import gc
import math
import weakref

import numpy as np
import pytest
import torch

from airrep import finetune
from airrep.config import FinetuneConfig
from airrep.data import Record, format_example
from airrep.finetune import (
    IGNORE,
    DivergedError,
    FinetuneStats,
    collate,
    finetune_and_evaluate,
    make_accelerator,
    per_example_loss,
    tokenize_records,
)

SETTINGS = FinetuneConfig(epochs=2, lr=1e-3, batch_size=8, eval_batch_size=5, max_length=64,
                          precision="fp32", seed=0)


@pytest.fixture(scope="module")
def train_records(heldout_records) -> list[Record]:
    return heldout_records[:24]


@pytest.fixture(scope="module")
def dev_records(heldout_records) -> list[Record]:
    return heldout_records[100:111]


@pytest.fixture(scope="module")
def short_records(tiny_random_lm, heldout_records) -> list[Record]:
    """Held-out records whose whole text fits in 150 tokens of the 500-token vocabulary."""
    tokenizer = tiny_random_lm.tokenizer
    fits = [r for r in heldout_records[300:1000]
            if len(tokenizer(format_example(r.prompt, r.response))["input_ids"]) < 150]
    assert len(fits) >= 10
    return fits


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def split_at_mask(example) -> int:
    """Number of leading IGNORE labels, checking that they are leading (one contiguous block)."""
    n_prompt = next((i for i, label in enumerate(example.labels) if label != IGNORE), len(example.labels))
    assert all(label != IGNORE for label in example.labels[n_prompt:])
    return n_prompt


# --- tokenize_records -----------------------------------------------------------------------


def test_mask_covers_exactly_the_prompt(tiny_random_lm, short_records):
    tokenizer = tiny_random_lm.tokenizer
    records = short_records
    for record, example in zip(records, tokenize_records(tokenizer, records, 160), strict=True):
        assert len(example.input_ids) == len(example.labels)
        n_prompt = split_at_mask(example)
        assert decode(tokenizer, example.input_ids[:n_prompt]) == "<s>" + format_example(record.prompt)
        scored = example.labels[n_prompt:]
        assert scored == example.input_ids[n_prompt:]
        assert decode(tokenizer, scored) == record.response + "</s>"


def test_long_prompt_keeps_the_whole_short_response(tiny_random_lm):
    tokenizer = tiny_random_lm.tokenizer
    record = Record(id="x", group_id="x", prompt=" ".join(["prompt words go on"] * 100),
                    response="The short answer.")
    (example,) = tokenize_records(tokenizer, [record], max_length=48)
    assert len(example.input_ids) == 48
    n_prompt = split_at_mask(example)
    assert decode(tokenizer, example.labels[n_prompt:]) == "The short answer.</s>"
    assert decode(tokenizer, example.input_ids[:n_prompt]).startswith("<s>### Instruction:\nprompt words")


def test_long_prompt_and_long_response_cut_the_prompt_first(tiny_random_lm):
    """The response keeps all but a quarter of the budget, which the prompt keeps."""
    tokenizer = tiny_random_lm.tokenizer
    response = " ".join(["response words keep coming"] * 100)
    record = Record(id="x", group_id="x", prompt=" ".join(["prompt words go on"] * 100), response=response)
    for max_length in (32, 33, 64):
        (example,) = tokenize_records(tokenizer, [record], max_length=max_length)
        assert len(example.input_ids) == max_length
        n_prompt = split_at_mask(example)
        assert n_prompt == max_length // 4
        assert response.startswith(decode(tokenizer, example.labels[n_prompt:]))


def test_long_response_after_short_prompt_fills_the_rest(tiny_random_lm):
    tokenizer = tiny_random_lm.tokenizer
    response = " ".join(["response words keep coming"] * 100)
    record = Record(id="x", group_id="x", prompt="Hi", response=response)
    (example,) = tokenize_records(tokenizer, [record], max_length=64)
    n_prompt = split_at_mask(example)
    assert decode(tokenizer, example.input_ids[:n_prompt]) == "<s>" + format_example("Hi")
    assert len(example.input_ids) == 64
    assert response.startswith(decode(tokenizer, example.labels[n_prompt:]))


def test_train_on_prompt_scores_every_token(tiny_random_lm, heldout_records):
    examples = tokenize_records(tiny_random_lm.tokenizer, heldout_records[:5], 64, train_on_prompt=True)
    assert all(e.labels == e.input_ids for e in examples)


def test_collate_pads_right_and_masks():
    examples = [finetune.TokenizedExample([5, 6, 7], [IGNORE, 6, 7]), finetune.TokenizedExample([8], [8])]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# --- per_example_loss -----------------------------------------------------------------------


def slow_example_losses(model, examples) -> list[float]:
    """Full-vocabulary logits of each example on its own (no padding), then a python loop."""
    out = []
    with torch.no_grad():
        for example in examples:
            ids = torch.tensor([example.input_ids])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            terms = [-log_probs[t, example.labels[t + 1]].item()
                     for t in range(len(example.labels) - 1) if example.labels[t + 1] != IGNORE]
            out.append(math.fsum(terms) / len(terms))
    return out


def test_per_example_loss_matches_full_logits(tiny_random_lm, short_records):
    model, tokenizer = tiny_random_lm.model, tiny_random_lm.tokenizer
    records = short_records[:9]
    examples = tokenize_records(tokenizer, records, max_length=160)
    assert len({len(e.input_ids) for e in examples}) > 3  # padding and reordering are exercised
    got = per_example_loss(model, examples, tokenizer.pad_token_id, batch_size=4,
                           accelerator=make_accelerator("fp32"))
    assert got.shape == (len(records),)
    np.testing.assert_allclose(got, slow_example_losses(model, examples), rtol=1e-5, atol=1e-5)


# --- finetune_and_evaluate ------------------------------------------------------------------


def test_finetune_leaves_base_model_unchanged_and_is_deterministic(tiny_random_lm, train_records,
                                                                   dev_records):
    model, tokenizer = tiny_random_lm.model, tiny_random_lm.tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, stats = finetune_and_evaluate(model, tokenizer, train_records, dev_records, SETTINGS)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert first.shape == (len(dev_records),)
    assert np.all(np.isfinite(first))
    assert isinstance(stats, FinetuneStats) and stats.train_tokens > 0
    assert math.isfinite(stats.final_train_loss)
    second, _ = finetune_and_evaluate(model, tokenizer, train_records, dev_records, SETTINGS)
    np.testing.assert_array_equal(first, second)
    other_seed, _ = finetune_and_evaluate(model, tokenizer, train_records, dev_records, SETTINGS, seed=7)
    assert not np.array_equal(first, other_seed)


def test_finetune_lowers_the_loss_of_what_it_trained_on(tiny_random_lm, train_records):
    model, tokenizer = tiny_random_lm.model, tiny_random_lm.tokenizer
    examples = tokenize_records(tokenizer, train_records, SETTINGS.max_length)
    before = per_example_loss(model, examples, tokenizer.pad_token_id, 8, make_accelerator("fp32"))
    after, _ = finetune_and_evaluate(model, tokenizer, train_records, train_records, SETTINGS)
    assert np.mean(after) < np.mean(before)
    assert np.mean(after < before) >= 0.9


def test_bf16_is_close_to_fp32(tiny_random_lm, train_records, dev_records):
    model, tokenizer = tiny_random_lm.model, tiny_random_lm.tokenizer
    fp32, _ = finetune_and_evaluate(model, tokenizer, train_records, dev_records, SETTINGS)
    bf16, _ = finetune_and_evaluate(model, tokenizer, train_records, dev_records,
                                    SETTINGS.model_copy(update={"precision": "bf16"}))
    assert bf16.dtype == np.float64 and bf16.shape == fp32.shape
    np.testing.assert_allclose(bf16, fp32, rtol=0.02)
    # fp32 again after bf16 (the accelerator state is reset between precisions).
    again, _ = finetune_and_evaluate(model, tokenizer, train_records, dev_records, SETTINGS)
    np.testing.assert_array_equal(again, fp32)


def poisoned(model):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    return broken


def test_nan_weights_raise_diverged_during_training(tiny_random_lm, train_records, dev_records):
    # lr 1e6 does not produce NaN in this model (AdamW steps are bounded by lr and the loss
    # saturates at log(vocab)), so a NaN weight stands in for a diverged optimizer.
    broken = poisoned(tiny_random_lm.model)
    with pytest.raises(DivergedError, match="training loss became nan"):
        finetune_and_evaluate(broken, tiny_random_lm.tokenizer, train_records, dev_records, SETTINGS)


def test_nan_dev_losses_raise_diverged(tiny_random_lm, train_records, dev_records, monkeypatch):
    """A fine-tune that ends in NaN weights without a NaN training loss is still caught."""
    monkeypatch.setattr(finetune, "train_lm", lambda *a, **k: FinetuneStats(0, 0.0, 0.0, 0.0))
    broken = poisoned(tiny_random_lm.model)
    with pytest.raises(DivergedError, match="dev loss"):
        finetune_and_evaluate(broken, tiny_random_lm.tokenizer, train_records, dev_records, SETTINGS)


# --- execution choices ----------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "device", "expected"),
                         [("auto", "cpu", "eager_autocast"), ("auto", "cuda", "sdpa"), ("sdpa", "cpu", "sdpa"),
                          ("eager", "cuda", "eager"), ("eager", "cpu", "eager")])
def test_attention_setting_picks_the_kernel(tiny_random_lm, setting, device, expected):
    model = copy.deepcopy(tiny_random_lm.model)
    model.set_attn_implementation("sdpa")
    finetune.use_attention(model, setting, torch.device(device))
    assert model.config._attn_implementation == expected


def test_eager_and_sdpa_fine_tunes_agree(tiny_random_lm, train_records, dev_records):
    model, tokenizer = tiny_random_lm.model, tiny_random_lm.tokenizer
    eager, _ = finetune_and_evaluate(model, tokenizer, train_records, dev_records,
                                     SETTINGS.model_copy(update={"attention": "eager"}))
    sdpa, _ = finetune_and_evaluate(model, tokenizer, train_records, dev_records,
                                    SETTINGS.model_copy(update={"attention": "sdpa"}))
    np.testing.assert_allclose(eager, sdpa, rtol=1e-4)


def test_a_finished_fine_tune_frees_its_model_without_garbage_collection(tiny_random_lm, train_records,
                                                                         dev_records, monkeypatch):
    # A reference cycle would keep each fine-tune's model and optimizer state alive until a
    # full collection, which in a worker holding many objects costs ~0.2 s per fine-tune.
    copies = []
    deepcopy = copy.deepcopy

    def tracked(obj, *args, **kwargs):
        result = deepcopy(obj, *args, **kwargs)
        if isinstance(result, torch.nn.Module):
            copies.append(weakref.ref(result))
        return result

    monkeypatch.setattr(finetune.copy, "deepcopy", tracked)
    gc.disable()
    try:
        finetune_and_evaluate(tiny_random_lm.model, tiny_random_lm.tokenizer, train_records, dev_records,
                              SETTINGS.model_copy(update={"precision": "bf16"}))
        assert copies and all(ref() is None for ref in copies)
    finally:
        gc.enable()
