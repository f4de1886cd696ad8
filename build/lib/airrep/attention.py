"""Eager attention whose score tensors stay in the autocast dtype.

Written by hand for speed. transformers' eager attention under bf16 autocast turns the
``(batch, heads, length, length)`` scores into fp32 (its additive mask is fp32, its softmax
returns fp32), and autocast then copies the probabilities back to bf16 for the next
matmul: for a small LM at fine-tuning lengths those copies, the fp32 softmax and its
backward are a large share of a step. Here scores, mask add, softmax and its gradient stay
in bf16; the softmax kernel still reduces in fp32 internally. The forward gives the same
losses bit for bit as transformers' eager path (the scores are bf16 there too before the
mask add); gradients differ only in where they are rounded to bf16 (~0.5% relative).

Registered with transformers as ``ATTENTION_NAME``; :func:`airrep.finetune.use_attention`
picks it on CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import repeat_kv

ATTENTION_NAME = "eager_autocast"


def eager_autocast_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' attention-function signature: ``query`` ``(batch, heads, q_len, dim)``,
    ``attention_mask`` additive ``(batch, 1, q_len, kv_len)``; returns the output as
    ``(batch, q_len, heads, dim)`` and the attention probabilities."""
    device = query.device.type
    autocast = torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else query.dtype
    groups = getattr(module, "num_key_value_groups", 1)
    with torch.autocast(device, enabled=False):
        query = query.to(dtype)
        key = repeat_kv(key, groups).to(dtype)
        value = repeat_kv(value, groups).to(dtype)
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask.to(dtype)
        probs = torch.softmax(scores, dim=-1)
        probs = nn.functional.dropout(probs, p=dropout, training=module.training)
        output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


AttentionInterface.register(ATTENTION_NAME, eager_autocast_attention)
# The additive float mask eager attention uses (never skipped, unlike sdpa's).
AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
