"""Pretrain a small causal LM from scratch on packed text (the CPU configs' base LMs).

Texts are tokenized, joined with ``bos``/``eos`` markers into one token stream and cut into
blocks of ``block_size`` tokens (no padding: every position trains). AdamW with a linear
warmup and a cosine decay to a tenth of the peak rate, the usual recipe for a single epoch
over a corpus. A long run (the general corpus: ~27M tokens, about 1.5 h on 2 CPU cores)
saves a checkpoint every ``checkpoint_every`` steps and resumes from it after a crash.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from airrep.finetune import make_accelerator, token_losses, use_attention

log = logging.getLogger(__name__)


@dataclass
class PretrainStats:
    tokens: int
    steps: int
    seconds: float
    final_loss: float  # mean training loss of the last 50 steps

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def pack_texts(tokenizer, texts: Sequence[str], block_size: int, batch: int = 2048) -> torch.Tensor:
    """``(n_blocks, block_size)`` token ids: every text as ``bos text eos``, concatenated and cut
    into blocks; the last partial block is dropped."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    parts: list[np.ndarray] = []
    for first in range(0, len(texts), batch):
        for ids in tokenizer(list(texts[first : first + batch]), add_special_tokens=False)["input_ids"]:
            parts.append(np.asarray(bos + ids + eos, dtype=np.int64))
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    n_blocks = len(stream) // block_size
    return torch.from_numpy(stream[: n_blocks * block_size].reshape(n_blocks, block_size).copy())


def pretrain_lm(
    model: nn.Module,
    blocks: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    warmup_steps: int,
    precision: str = "auto",
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 500,
    show_progress_bar: bool = True,
) -> PretrainStats:
    """Train ``model`` in place on ``blocks`` (from :func:`pack_texts`) with next-token loss."""
    accelerator = make_accelerator(precision)
    model.to(accelerator.device)
    use_attention(model, "auto", accelerator.device)
    steps_per_epoch = math.ceil(len(blocks) / batch_size)
    total = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    schedule = get_cosine_schedule_with_warmup(optimizer, min(warmup_steps, total // 10), total, num_cycles=0.45)
    start_step = _resume(model, optimizer, schedule, checkpoint_dir)
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(len(blocks), generator=generator) for _ in range(epochs)]
    mask = torch.ones((batch_size, blocks.shape[1]), dtype=torch.long)
    losses: list[float] = []
    tokens, begin = 0, time.perf_counter()
    model.train()
    bar = tqdm(total=total, initial=start_step, desc="pretrain LM", unit="step", disable=not show_progress_bar)
    for step in range(start_step, total):
        epoch, position = divmod(step, steps_per_epoch)
        rows = orders[epoch][position * batch_size : (position + 1) * batch_size]
        ids = blocks[rows].to(accelerator.device)
        batch = {"input_ids": ids, "labels": ids, "attention_mask": mask[: len(rows)].to(accelerator.device)}
        with accelerator.autocast():
            loss = token_losses(model, batch)[0].mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss became {loss.item()} at step {step}; lower base_llm.tiny.lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += ids.numel()
        bar.update()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if checkpoint_dir is not None and (step + 1) % checkpoint_every == 0 and step + 1 < total:
            _checkpoint(model, optimizer, schedule, step + 1, checkpoint_dir)
            log.info("pretraining step %d/%d: loss %.3f, %.0f tokens/s", step + 1, total,
                     np.mean(losses[-50:]), tokens / (time.perf_counter() - begin))
    bar.close()
    model.eval()
    return PretrainStats(tokens, total - start_step, time.perf_counter() - begin,
                         float(np.mean(losses[-50:])) if losses else math.nan)


def _checkpoint(model: nn.Module, optimizer, schedule, step: int, folder: str | Path) -> None:
    """Weights as safetensors, optimizer and schedule state as plain tensors and numbers."""
    from airrep.atomic import atomic_path, write_bytes_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    for index, param_state in optimizer.state_dict()["state"].items():
        for name, value in param_state.items():
            state[f"optim.{index}.{name}"] = torch.as_tensor(value).clone()
    with atomic_path(folder / "checkpoint.safetensors") as temp:
        save_file(state, str(temp), metadata={"step": str(step), "schedule": str(schedule.last_epoch)})
    write_bytes_atomic(folder / "checkpoint.step", str(step).encode())


def _resume(model: nn.Module, optimizer, schedule, folder: str | Path | None) -> int:
    """The step to start from: 0, or the step of a checkpoint in ``folder`` (loaded into place)."""
    if folder is None or not (Path(folder) / "checkpoint.safetensors").exists():
        return 0
    from safetensors import safe_open

    path = Path(folder) / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(path))
    model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}, strict=False)
    optim_state = optimizer.state_dict()
    for key, value in state.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(optim_state)
    schedule.last_epoch = int(metadata["schedule"]) - 1
    with warnings.catch_warnings():  # "scheduler stepped before the optimizer": a resumed run
        warnings.simplefilter("ignore", UserWarning)
        schedule.step()
    log.info("resuming pretraining from step %s (%s)", metadata["step"], path)
    return int(metadata["step"])
