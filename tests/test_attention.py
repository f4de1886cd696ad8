"""airrep.attention: eager attention with bf16 scores against transformers' own kernels."""

import copy

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from airrep.attention import ATTENTION_NAME
from airrep.finetune import collate, make_accelerator, per_example_loss, token_losses, tokenize_records
from airrep.transformers_lock import TRANSFORMERS_LOCK


def with_attention(model, name: str):
    model = copy.deepcopy(model)
    model.set_attn_implementation(name)
    return model


def gradients(model, batch, precision: str) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    with make_accelerator(precision).autocast():
        losses, _ = token_losses(model, batch)
    losses.mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def examples(tiny_random_lm, heldout_records):
    return tokenize_records(tiny_random_lm.tokenizer, heldout_records[:24], 64)


@pytest.fixture(scope="module")
def grouped_query_lm(tiny_random_lm):
    """The tiny random LM's shape with 4 query heads sharing 2 key/value heads (as in SmolLM2)."""
    config = LlamaConfig(**{**tiny_random_lm.model.config.to_dict(), "num_attention_heads": 4,
                            "num_key_value_heads": 2})
    torch.manual_seed(0)
    with TRANSFORMERS_LOCK:
        return LlamaForCausalLM(config)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_losses_match_eager_attention(tiny_random_lm, grouped_query_lm, examples, precision):
    """The forward keeps eager attention's arithmetic: bf16 scores before the mask either way."""
    pad = tiny_random_lm.tokenizer.pad_token_id
    accelerator = make_accelerator(precision)
    for model in (tiny_random_lm.model, grouped_query_lm):
        eager = per_example_loss(with_attention(model, "eager"), examples, pad, 8, accelerator)
        ours = per_example_loss(with_attention(model, ATTENTION_NAME), examples, pad, 8, accelerator)
        np.testing.assert_allclose(ours, eager, rtol=1e-6)


@pytest.mark.parametrize(("precision", "tolerance"), [("bf16", 0.03), ("fp32", 1e-5)])
def test_gradients_match_eager_attention(grouped_query_lm, tiny_random_lm, examples, precision, tolerance):
    """bf16 gradients differ from eager's only by where they are rounded to bf16."""
    batch = collate(examples[:8], tiny_random_lm.tokenizer.pad_token_id)
    eager = gradients(with_attention(grouped_query_lm, "eager"), batch, precision)
    ours = gradients(with_attention(grouped_query_lm, ATTENTION_NAME), batch, precision)
    for name, grad in eager.items():
        assert (ours[name] - grad).norm() <= tolerance * grad.norm() + 1e-12, name
