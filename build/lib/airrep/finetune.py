"""Fine-tune a fresh copy of the base LLM on one subset; return per-example dev losses.

This is the product's hot path: label generation runs it once per subset (the paper:
10^4 times). Three things are written by hand for speed, all exact:

- the LM head runs only on positions that carry a response-token loss (prompt and padding
  positions never reach the vocabulary projection, which dominates a small LM's FLOPs),
  and its cross-entropy goes through the logits in cache-sized chunks
  (:mod:`airrep.linear_cross_entropy`);
- per-example losses come from one scatter-add over those positions.

Mixed precision and devices go through ``accelerate`` (bf16 autocast uses AMX or
AVX512-BF16 on CPUs that have them, and tensor cores on GPUs; ``precision: auto`` picks
fp32 on CPUs without them, see :mod:`airrep.precision`).
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

from airrep.attention import ATTENTION_NAME
from airrep.config import FinetuneConfig
from airrep.data import Record, format_example, truncate_pair
from airrep.linear_cross_entropy import linear_cross_entropy
from airrep.precision import resolve_precision

log = logging.getLogger(__name__)

IGNORE = -100


class DivergedError(RuntimeError):
    """A fine-tune produced a NaN/inf loss: its losses must not become labels."""


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens; the response's own ids elsewhere


@dataclass
class FinetuneStats:
    train_tokens: int
    train_seconds: float
    eval_seconds: float
    final_train_loss: float

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / max(self.train_seconds, 1e-9)


def tokenize_records(
    tokenizer, records: Sequence[Record], max_length: int, train_on_prompt: bool = False
) -> list[TokenizedExample]:
    """Token ids of ``format_example`` texts, with the loss mask on the response only.

    When a pair is longer than ``max_length``, the prompt is cut first
    (:func:`airrep.data.truncate_pair`) so that every example keeps response tokens to learn
    from and to be scored on.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    examples = []
    for record in records:
        prompt_ids = bos + tokenizer(format_example(record.prompt), add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(record.response, add_special_tokens=False)["input_ids"] + eos
        keep_prompt, keep_response = truncate_pair(len(prompt_ids), len(response_ids), max_length)
        prompt_ids, response_ids = prompt_ids[:keep_prompt], response_ids[:keep_response]
        labels = (prompt_ids if train_on_prompt else [IGNORE] * len(prompt_ids)) + response_ids
        examples.append(TokenizedExample(prompt_ids + response_ids, labels))
    return examples


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


_ACCELERATOR_LOCK = threading.Lock()


def make_accelerator(precision: str) -> Accelerator:
    """An ``Accelerator`` for ``precision``; the process-wide state is reset if it differs.

    accelerate keeps one global state per process and refuses a second mixed-precision
    setting, but one worker may run fine-tunes and evaluations with different settings.
    """
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve_precision(precision)]
    # accelerate's states are process-wide singletons initialised field by field: two worker
    # threads constructing at once can see a half-initialised GradientState.
    with _ACCELERATOR_LOCK:
        state = AcceleratorState._shared_state
        if state and state.get("_mixed_precision", mixed) != mixed:
            AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())


def token_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every scored token and the batch row it belongs to.

    Returns ``(losses, rows)``, both ``(n_scored_tokens,)``. Only positions whose next token
    is a response token go through the LM head.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]  # position t predicts token t+1
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    head = model.get_output_embeddings()
    if type(head) is nn.Linear and head.bias is None:
        return linear_cross_entropy(hidden[rows, cols], head.weight, targets[rows, cols]), rows
    logits = head(hidden[rows, cols])  # (n_scored, vocab)
    losses = nn.functional.cross_entropy(logits.float(), targets[rows, cols], reduction="none")
    return losses, rows


def train_lm(
    model: nn.Module,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    config: FinetuneConfig,
    seed: int,
    accelerator: Accelerator | None = None,
) -> FinetuneStats:
    """Train ``model`` in place: AdamW, constant lr, token-mean loss on labelled tokens."""
    accelerator = accelerator or make_accelerator(config.precision)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if accelerator.scaler is not None:  # fp16: the loss scaler wraps the optimizer step
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        # Nothing else in ``prepare`` applies to a one-process fine-tune, and it patches
        # ``model.forward`` and ``optimizer.step`` with closures that form reference cycles:
        # the model and its Adam state would then outlive the fine-tune until a full garbage
        # collection (~0.2 s per fine-tune in a pipeline process, holding the GIL).
        model.to(accelerator.device)
    model.train()
    tokens, last_loss = 0, math.nan
    start = time.perf_counter()
    for _epoch in range(config.epochs):
        order = torch.randperm(len(examples), generator=generator).tolist()
        for first in range(0, len(order), config.batch_size):
            batch = collate([examples[i] for i in order[first : first + config.batch_size]], pad_id)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                losses, _ = token_losses(model, batch)
                loss = losses.mean()
            if not torch.isfinite(loss):
                raise DivergedError(
                    f"training loss became {loss.item()} (lr {config.lr}, precision {config.precision}); "
                    "lower finetune.lr or use finetune.precision: fp32"
                )
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            last_loss = loss.item()
    return FinetuneStats(tokens, time.perf_counter() - start, 0.0, last_loss)


@torch.inference_mode()
def per_example_loss(
    model: nn.Module,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    batch_size: int,
    accelerator: Accelerator,
) -> np.ndarray:
    """Mean response-token loss of every example, ``(n_examples,)``, in input order.

    Batches are built from length-sorted examples so little compute goes to padding.
    """
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    result = np.zeros(len(examples), dtype=np.float64)
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        batch = {k: v.to(accelerator.device) for k, v in collate([examples[i] for i in chunk], pad_id).items()}
        with accelerator.autocast():
            losses, rows = token_losses(model, batch)
        sums = torch.zeros(len(chunk), dtype=torch.float64, device=losses.device)
        counts = torch.zeros(len(chunk), dtype=torch.float64, device=losses.device)
        sums.index_add_(0, rows, losses.double())
        counts.index_add_(0, rows, torch.ones_like(losses, dtype=torch.float64))
        result[chunk] = (sums / counts.clamp_min(1)).cpu().numpy()
    return result


def use_attention(model: nn.Module, attention: str, device: torch.device) -> None:
    """Switch ``model`` to the configured attention kernel.

    ``auto`` picks :mod:`airrep.attention`'s eager attention on CPU, and keeps the model's
    own choice on GPUs. Measured on 2 CPU cores for a fine-tune step of 16 x 160 tokens: the
    CPU flash kernel's backward took 12x its forward, and eager attention made the whole
    step ~25% faster; keeping eager attention's scores in bf16 saved another ~10% of a
    fine-tune. A model loaded with another kernel on purpose (e.g. ``flash_attention_2``)
    keeps it.
    """
    current = getattr(model.config, "_attn_implementation", None)
    wanted = (ATTENTION_NAME if device.type == "cpu" else current) if attention == "auto" else attention
    if wanted != current and current in ("eager", "sdpa", ATTENTION_NAME):
        model.set_attn_implementation(wanted)


def finetune_and_evaluate(
    base_model: nn.Module,
    tokenizer,
    train_records: Sequence[Record],
    dev_records: Sequence[Record],
    config: FinetuneConfig,
    seed: int | None = None,
) -> tuple[np.ndarray, FinetuneStats]:
    """Fine-tune a copy of ``base_model`` on ``train_records``; score ``dev_records``.

    Returns ``(dev_losses, stats)``: ``dev_losses`` is ``(len(dev_records),)``, each the mean
    loss over that example's response tokens. ``base_model`` itself is never modified, so
    one loaded model serves every subset of a worker.
    """
    seed = config.seed if seed is None else seed
    torch.manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_examples = tokenize_records(tokenizer, train_records, config.max_length)
    dev_examples = tokenize_records(tokenizer, dev_records, config.max_length)
    accelerator = make_accelerator(config.precision)
    model = copy.deepcopy(base_model)
    use_attention(model, config.attention, accelerator.device)
    stats = train_lm(model, train_examples, pad_id, config, seed, accelerator)
    start = time.perf_counter()
    dev_losses = per_example_loss(model, dev_examples, pad_id, config.eval_batch_size, accelerator)
    stats.eval_seconds = time.perf_counter() - start
    if not np.all(np.isfinite(dev_losses)):
        raise DivergedError("a dev loss is NaN/inf after fine-tuning; these losses are not usable as labels: "
                            f"lower finetune.lr (now {config.lr}) or use finetune.precision: fp32")
    if accelerator.scaler is not None:
        accelerator.free_memory()  # breaks ``prepare``'s reference cycles (see train_lm)
    return dev_losses, stats
