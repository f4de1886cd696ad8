"""AirRep training: weighted ranking of subsets by attention-pooled group scores.

Each step takes one cross-validation split, ``reference_size`` of its dev examples and
``topk`` of its subsets, scores every subset for every dev example, and applies the
weighted RankNet loss against the normalized-loss labels (paper §3.4).

Memory: a step touches ``topk × subset_size`` training texts (paper: 16 × 1000). The
two-pass gradient keeps activations for only one chunk at a time: pass 1 encodes every
distinct member without a graph and takes the loss gradient with respect to those
embeddings; pass 2 re-encodes chunk by chunk with a graph and back-propagates the cached
embedding gradient. The result equals the single-pass gradient (tested). Subsets of one
pool overlap, so each distinct member is encoded once per pass, not once per subset.

Devices go through ``accelerate``. Under ``accelerate launch`` (several GPUs), each process
draws its own steps and gradients are averaged across processes before every update; the
model is not DDP-wrapped because the two-pass gradient runs two backward passes per step.
Only the main process evaluates and saves. (The multi-process path has not been run on
this project's CPU-only machines.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup

from airrep.config import TrainConfig
from airrep.losses import pairwise_accuracy, weighted_ranknet
from airrep.model import AirRep, AirRepModel, TokenizedTexts, group_scores

log = logging.getLogger(__name__)


@dataclass
class TrainingSplit:
    """One split's training signal: texts, subsets (indices into ``pool_texts``), labels."""

    dev_texts: list[str]
    pool_texts: list[str]
    subsets: np.ndarray  # (n_subsets, subset_size) indices into pool_texts
    labels: np.ndarray  # (n_subsets, n_dev), from airrep.labels.normalize


@dataclass
class TrainingCurve:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    pair_accuracy: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_lds: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def ranking_step(model: AirRepModel, dev: TokenizedTexts, dev_rows: np.ndarray, pool: TokenizedTexts,
                 members: np.ndarray, target: torch.Tensor, config: TrainConfig,
                 two_pass: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate the gradient of one step's loss into ``model``; return ``(loss, scores)``.

    ``members``: ``(topk, subset_size)`` pool indices; ``target``: ``(len(dev_rows), topk)``.
    """
    device = next(model.parameters()).device
    unique, inverse = np.unique(members, return_inverse=True)
    groups = torch.as_tensor(inverse.reshape(members.shape), device=device)
    chunks = pool.chunks(unique, config.encode_chunk)
    with _autocast(config.precision, device):
        query = model(**dev.batch(dev_rows, device)).float()  # (n_ref, dim)
    dim = query.shape[1]
    if not two_pass:
        train = torch.empty((len(unique), dim), device=device)
        for chunk in chunks:
            with _autocast(config.precision, device):
                train = train.index_put((torch.as_tensor(chunk, device=device),),
                                        model(**pool.batch(unique[chunk], device)).float())
        scores = group_scores(query, train, groups)
        loss = weighted_ranknet(scores, target, config.t_min, config.t_max)
        loss.backward()
        return loss.detach(), scores.detach()
    train = torch.empty((len(unique), dim), device=device)
    with torch.no_grad():
        for chunk in chunks:  # pass 1: every distinct member, no graph
            with _autocast(config.precision, device):
                train[torch.as_tensor(chunk, device=device)] = model(**pool.batch(unique[chunk], device)).float()
    train.requires_grad_(True)
    scores = group_scores(query, train, groups)  # (n_ref, topk)
    loss = weighted_ranknet(scores, target, config.t_min, config.t_max)
    loss.backward()  # gradient into the query encoder and into the cached train embeddings
    cached_grad = train.grad
    for chunk in chunks:  # pass 2: re-encode with a graph, back-propagate the cached gradient
        index = torch.as_tensor(chunk, device=device)
        with _autocast(config.precision, device):
            emb = model(**pool.batch(unique[chunk], device)).float()
        emb.backward(cached_grad[index])
    return loss.detach(), scores.detach()


def train_airrep(
    splits: Sequence[TrainingSplit],
    config: TrainConfig,
    out_dir: str | Path | None = None,
    evaluate: Callable[[AirRep], float] | None = None,
    airrep: AirRep | None = None,
    show_progress_bar: bool = True,
) -> tuple[AirRep, TrainingCurve]:
    """Train AirRep on labelled splits; return the model and its training curve.

    ``evaluate`` (e.g. LDS on held-out subsets) runs every ``config.eval_every`` steps and
    at the end. Checkpoints go to ``out_dir/checkpoint-<step>`` every ``checkpoint_every``.
    """
    if not splits:
        raise ValueError("no labelled splits to train on; run label generation first")
    torch.manual_seed(config.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    # Data parallel: every process draws its own steps, gradients are averaged before the update.
    rng = np.random.default_rng([config.seed, accelerator.process_index])
    airrep = airrep or AirRep.from_encoder(config.encoder, precision=config.precision)
    model = airrep.model
    model.config.max_tokens = config.max_tokens
    model.freeze_below(config.trainable_layers)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
    # The model is not wrapped for DDP: the two-pass gradient runs backward twice outside
    # one forward, so gradients are all-reduced by hand below instead of by DDP's hooks.
    core = model.to(accelerator.device)
    optimizer, schedule = accelerator.prepare(optimizer, schedule)
    core.eval()  # dropout off: the ranking signal is noisy enough (DESIGN.md §1)
    tokens = [(TokenizedTexts(airrep.tokenizer, s.dev_texts, config.max_tokens),
               TokenizedTexts(airrep.tokenizer, s.pool_texts, config.max_tokens)) for s in splits]
    curve = TrainingCurve()
    start = time.perf_counter()
    for step in tqdm(range(1, config.steps + 1), desc="train AirRep", disable=not show_progress_bar):
        k = int(rng.integers(len(splits)))
        split = splits[k]
        n_subsets, n_dev = split.labels.shape
        dev_rows = rng.choice(n_dev, size=min(config.reference_size, n_dev), replace=False)
        chosen = rng.choice(n_subsets, size=min(config.topk, n_subsets), replace=False)
        target = torch.as_tensor(split.labels[np.ix_(chosen, dev_rows)].T, dtype=torch.float32,
                                 device=accelerator.device)  # (n_ref, topk)
        loss, scores = ranking_step(core, tokens[k][0], dev_rows, tokens[k][1], split.subsets[chosen],
                                    target, config)
        if accelerator.num_processes > 1:
            for param in trainable:
                if param.grad is not None:
                    param.grad = accelerator.reduce(param.grad, reduction="mean")
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"AirRep training loss became {loss.item()} at step {step}; lower train.lr")
        curve.step.append(step)
        curve.loss.append(float(loss))
        curve.pair_accuracy.append(pairwise_accuracy(scores, target, config.t_min))
        if not show_progress_bar and accelerator.is_main_process and step % max(1, config.steps // 10) == 0:
            # Orchestrated runs have no terminal for a bar: a tenth of the way, a log line.
            log.info("step %d/%d: loss %.4f, pair accuracy %.3f, %.0f s", step, config.steps,
                     float(np.mean(curve.loss[-10:])), float(np.mean(curve.pair_accuracy[-10:])),
                     time.perf_counter() - start)
        if evaluate is not None and accelerator.is_main_process and (
                step % config.eval_every == 0 or step == config.steps):
            curve.eval_step.append(step)
            curve.eval_lds.append(evaluate(airrep))
            log.info("step %d: loss %.4f, held-out LDS %.4f", step, curve.loss[-1], curve.eval_lds[-1])
        if out_dir is not None and accelerator.is_main_process and step % config.checkpoint_every == 0 \
                and step != config.steps:
            airrep.save_pretrained(Path(out_dir) / f"checkpoint-{step}")
    curve.seconds = time.perf_counter() - start
    if out_dir is not None and accelerator.is_main_process:
        airrep.save_pretrained(out_dir)
    return airrep, curve
