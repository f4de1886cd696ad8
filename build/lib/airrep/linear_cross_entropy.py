"""Cross-entropy of an LM head without materialising fp32 logits.

Written by hand for speed. For a small LM the vocabulary projection and its softmax are
most of a fine-tune step: ``torch.nn.functional.cross_entropy`` over ``(tokens, vocab)``
logits writes and re-reads that matrix five times (bf16 logits, fp32 copy, log-softmax,
its gradient, the gradient's bf16 copy), each far larger than the CPU's cache. Here the
rows go through in chunks that fit in cache, each through one fused fp32 softmax. The
forward keeps the probabilities in the compute dtype when they fit in a budget (else the
backward recomputes them chunk by chunk, to the same values), and the backward uses
that the gradient of ``lse - logit[target]`` is ``softmax - onehot``:

- ``d hidden = g * (P @ W - W[targets])`` and ``d W = P.T @ (g * hidden) - scatter(g * hidden)``,

so neither the one-hot nor the upstream gradient ``g`` touches the ``(tokens, vocab)``
matrix: the backward is two matmuls and row-sized corrections. Losses match
``cross_entropy`` on the same logits; gradients are closer to the exact ones than
``cross_entropy``'s under autocast, which rounds ``(softmax - onehot) * g`` to bf16 where
this rounds only the softmax (tests compare both with float64).
"""

from __future__ import annotations

import torch

# fp32 logits per chunk (4 MiB on CPU; GPUs prefer few large chunks).
_CPU_CHUNK_ELEMENTS = 1 << 20
_GPU_CHUNK_ELEMENTS = 1 << 28
_MIN_CHUNK_ROWS = 64
# Probabilities (compute dtype) kept from the forward, or recomputed at once for the two
# gradient matmuls in the backward: 64 MiB of bf16 on CPU, a whole fine-tuning batch of the
# tiny config (16 x 160 tokens, 8000 words).
_CPU_GROUP_ELEMENTS = 1 << 25


def _chunk_rows(vocab: int, device: torch.device) -> int:
    budget = _CPU_CHUNK_ELEMENTS if device.type == "cpu" else _GPU_CHUNK_ELEMENTS
    return max(_MIN_CHUNK_ROWS, budget // vocab)


def _group_rows(vocab: int, chunk_rows: int, device: torch.device) -> int:
    """Rows whose compute-dtype probabilities are held at once."""
    budget = _CPU_GROUP_ELEMENTS if device.type == "cpu" else _GPU_CHUNK_ELEMENTS
    return max(1, budget // vocab // chunk_rows) * chunk_rows


def _softmax(hidden: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(logits, softmax(logits))`` of one chunk: the compute-dtype matmul, then one
    fused softmax pass per row (cheaper than separate max, subtract, exp and sum passes)."""
    logits = (hidden @ weight.T).float()
    return logits, torch.softmax(logits, dim=1)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                compute_dtype: torch.dtype) -> torch.Tensor:
        hidden_c, weight_c = hidden.to(compute_dtype), weight.to(compute_dtype)
        n, vocab = hidden.shape[0], weight.shape[0]
        rows = _chunk_rows(vocab, hidden.device)
        keep = any(ctx.needs_input_grad[:2]) and n <= _group_rows(vocab, rows, hidden.device)
        probs = torch.empty(n, vocab, dtype=compute_dtype, device=hidden.device) if keep else None
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for first in range(0, n, rows):
            part = slice(first, first + rows)
            logits, softmax = _softmax(hidden_c[part], weight_c)
            # log-sum-exp from the largest probability (the largest logit's, at least 1/vocab)
            lse = logits.amax(dim=1) - softmax.amax(dim=1).log_()
            losses[part] = lse - logits.gather(1, targets[part, None]).squeeze(1)
            if keep:
                probs[part] = softmax
        ctx.save_for_backward(hidden_c, weight_c, targets, probs)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        hidden_c, weight_c, targets, probs = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, vocab = hidden_c.shape[0], weight_c.shape[0]
        grad_hidden = torch.empty_like(hidden_c, dtype=hidden_dtype) if need_hidden else None
        grad_weight = torch.zeros_like(weight_c, dtype=torch.float32) if need_weight else None
        rows = _chunk_rows(vocab, hidden_c.device)
        group = _group_rows(vocab, rows, hidden_c.device)  # one group when the forward kept them
        for start in range(0, n, group):
            stop = min(start + group, n)
            if probs is not None:
                softmax = probs[start:stop]
            else:  # not kept by the forward: recompute this group's, chunk by chunk
                softmax = torch.empty(stop - start, vocab, dtype=weight_c.dtype, device=weight_c.device)
                for first in range(start, stop, rows):
                    end = min(first + rows, stop)
                    softmax[first - start : end - start] = _softmax(hidden_c[first:end], weight_c)[1]
            upstream = grad_losses[start:stop, None].float()
            chosen = targets[start:stop]
            if need_hidden:
                grad_hidden[start:stop] = (softmax @ weight_c).float().sub_(weight_c[chosen].float()).mul_(upstream)
            if need_weight:
                scaled = hidden_c[start:stop].float() * upstream  # not in place: may be ``hidden`` itself
                grad_weight += (softmax.T @ scaled.to(weight_c.dtype)).float()
                grad_weight.index_add_(0, chosen, scaled, alpha=-1.0)
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight_dtype), None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row ``cross_entropy(hidden @ weight.T, targets)``, ``(n,)`` fp32.

    Under autocast the matmuls run in the autocast dtype (as ``nn.Linear`` would), the
    softmax always in fp32.
    """
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, dtype)
