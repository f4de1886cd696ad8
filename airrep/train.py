"""AirRep training: weighted ranking of subsets by attention-pooled group scores.

Each step takes one cross-validation split, up to ``reference_size`` of its dev examples and
up to ``topk`` of its subsets, scores every subset for every dev example, and applies the
weighted RankNet loss against the normalized-loss labels (paper §3.4).

What a step costs, and how it is kept small:

- **Frozen-layer cache.** With ``trainable_layers: k``, the embeddings and the blocks below
  the top ``k`` never change, so their hidden states are computed once per text per run
  (:class:`TextBank`) and every step runs only the top ``k`` blocks (with ``k = 0``, only
  the projection: the cache then holds the pooled vectors).
- **One pass or two.** A step touches every distinct text of its dev rows and subsets
  (subsets of one pool overlap, so each pool text is encoded once per step however many
  subsets hold it). When their activations fit ``activation_budget_mb`` the step encodes them
  with a graph and back-propagates once. Otherwise it uses the two-pass gradient: pass 1
  encodes without a graph and takes the loss gradient with respect to the embeddings; pass 2
  re-encodes chunk by chunk with a graph and back-propagates the cached embedding gradient.
  Both give the same gradient (tested).
- **Validation on held-out splits.** The last ``validation_splits`` splits are never trained
  on. Every ``eval_every`` steps their LDS (the benchmark's metric, on their own subsets and
  labels) is computed; the best weights are kept and restored at the end, and training stops
  after ``patience`` evaluations without improvement. Training pair accuracy alone says
  little: a model that memorises its few thousand training texts raises it while its
  held-out LDS falls.

Devices go through ``accelerate``. Under ``accelerate launch`` (``train.processes``, see
:mod:`airrep.launch`) the processes share every step: all draw the same dev examples and
subsets, each encodes a share of the step's texts, and the summed gradient is the one a
single process computes (tested). The model is not DDP-wrapped: the two-pass gradient runs
two backward passes per step and the shares meet at the embeddings, not the parameters.
Only the main process evaluates and saves.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from airrep.config import TrainConfig
from airrep.lexical import fielded_similarity
from airrep.losses import pairwise_accuracy, weighted_ranknet
from airrep.metrics import lds
from airrep.model import AirRep, AirRepModel, TokenizedTexts, pool_groups_shared, pool_members
from airrep.precision import resolve_precision

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
    eval_lds: list[float] = field(default_factory=list)  # mean LDS of the validation splits
    seconds: float = 0.0
    best_step: int | None = None  # the step whose weights were kept (0: the untrained model; None: the last)
    cache_seconds: float = 0.0  # computing the frozen layers' states once
    label_pairs: int = 0  # (dev example, subset) labels scored over all steps
    initial_scale: float | None = None  # the starting scale picked by validation, if candidates were given
    initial_lexical_weight: list[float] | None = None  # likewise for the lexical channel's weights, per field
    processes: int = 1  # processes that shared every step (train.processes)


def _autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")


class TextBank:
    """Every distinct text of a run, tokenized once, and (with a frozen bottom) the hidden
    states of its frozen layers, computed once.

    ``rows(texts)`` maps texts to bank rows; :meth:`encode` runs the trainable part of the
    model on bank rows. The cache holds each text's states without padding in one flat
    ``float16`` tensor (``cache_dtype``); with no trainable block it holds pooled vectors.
    """

    def __init__(self, tokenizer, texts: Sequence[str], max_tokens: int) -> None:
        self.index = {text: i for i, text in enumerate(dict.fromkeys(texts))}
        self.tokens = TokenizedTexts(tokenizer, list(self.index), max_tokens)
        self.start: int | None = None  # first block that runs at each step (None: no cache)
        self.states: torch.Tensor | None = None
        self.offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self.index[t] for t in texts], dtype=np.int64)

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        return np.array([len(self.tokens.ids[r]) for r in rows])

    def build_cache(self, model: AirRepModel, start: int, chunk: int, precision: str,
                    dtype: torch.dtype = torch.float16, show_progress_bar: bool = False) -> float:
        """Compute the frozen layers' output for every text; returns the seconds it took."""
        begin = time.perf_counter()
        device = next(model.parameters()).device
        n_blocks = len(model.blocks())
        pooled = start >= n_blocks
        rows = np.arange(len(self))
        lengths = self.lengths(rows)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        width = model.config.encoder["hidden_size"]
        self.states = torch.empty((len(self), width) if pooled else (int(self.offsets[-1]), width), dtype=dtype)
        was_training = model.training
        model.eval()
        with torch.inference_mode(), _autocast(precision, device):
            for part in tqdm(self.tokens.chunks(rows, chunk), desc="frozen layers", disable=not show_progress_bar):
                batch = self.tokens.batch(rows[part], device)
                hidden = model.frozen_states(batch["input_ids"], batch["attention_mask"], min(start, n_blocks))
                if pooled:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    self.states[torch.as_tensor(rows[part])] = ((hidden * mask).sum(1) / mask.sum(1)).to(dtype).cpu()
                    continue
                for i, row in enumerate(rows[part]):
                    self.states[self.offsets[row] : self.offsets[row + 1]] = hidden[i, : lengths[row]].to(dtype).cpu()
        model.train(was_training)
        self.start = start
        return time.perf_counter() - begin

    def encode(self, model: AirRepModel, rows: np.ndarray, chunk: int, precision: str) -> torch.Tensor:
        """Embeddings ``(len(rows), dim)`` in ``rows`` order, with a graph when grad is enabled."""
        device = next(model.parameters()).device
        parts, order = [], []
        for part in self.tokens.chunks(rows, chunk):
            with _autocast(precision, device):
                parts.append(self._encode_chunk(model, rows[part], device).float())
            order.append(part)
        out = torch.cat(parts)
        position = torch.as_tensor(np.concatenate(order), device=device)
        return torch.empty_like(out).index_copy(0, position, out)

    def _encode_chunk(self, model: AirRepModel, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        if self.start is None:
            return model(**self.tokens.batch(rows, device))
        compute = next(model.parameters()).dtype
        if self.states.shape[0] == len(self) and self.start >= len(model.blocks()):  # pooled vectors
            return model.head(self.states[torch.as_tensor(rows)].to(device, compute))
        lengths = self.lengths(rows)
        hidden = torch.zeros((len(rows), int(lengths.max()), self.states.shape[1]), dtype=compute)
        mask = torch.zeros((len(rows), int(lengths.max())), dtype=torch.long)
        for i, row in enumerate(rows):
            hidden[i, : lengths[i]] = self.states[self.offsets[row] : self.offsets[row + 1]]
            mask[i, : lengths[i]] = 1
        return model.forward_from(hidden.to(device), mask.to(device), self.start)


def activation_bytes(model: AirRepModel, n_tokens: int, start: int | None, precision: str) -> int:
    """Rough size of the autograd activations of ``n_tokens`` through the trained blocks:
    per token and block, about 16 hidden-size vectors, two of the feed-forward width, and
    three attention rows per head (at the step's mean length, taken as 128)."""
    encoder = model.config.encoder
    n_blocks = len(model.blocks())
    trained = n_blocks - (start if start is not None else 0)
    per_token = (16 * encoder["hidden_size"] + 2 * encoder["intermediate_size"]
                 + 3 * encoder["num_attention_heads"] * 128)
    size = 2 if resolve_precision(precision) == "bf16" else 4
    return int(n_tokens * max(trained, 0) * per_token * size) + n_tokens * encoder["hidden_size"] * size


def _fits(model: AirRepModel, bank: TextBank, rows: np.ndarray, config: TrainConfig) -> bool:
    """Whether encoding ``rows`` with a graph fits ``activation_budget_mb`` (one backward pass)."""
    need = activation_bytes(model, int(bank.lengths(rows).sum()), bank.start, config.precision)
    return need <= config.activation_budget_mb * 2**20


def ranking_step(model: AirRepModel, bank: TextBank, dev_rows: np.ndarray, members: np.ndarray,
                 target: torch.Tensor, config: TrainConfig, one_pass: bool | None = None,
                 lexical: torch.Tensor | None = None,
                 accelerator: Accelerator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate the gradient of one step's loss into ``model``; return ``(loss, scores)``.

    ``dev_rows``: bank rows of the step's dev examples; ``members``: ``(topk, subset_size)``
    bank rows of its subsets; ``target``: ``(len(dev_rows), topk)`` labels. ``one_pass``
    ``None`` decides by ``config.activation_budget_mb``. ``lexical``: ``(n_fields, len(dev_rows),
    topk, subset_size)`` TF-IDF cosines of each dev example with each member, one per lexical
    field, for a model with the lexical channel. With an ``accelerator`` of several processes, every process is called
    with the same step and accumulates its share of the gradient (:func:`_shared_step`).
    """
    unique, inverse = np.unique(members, return_inverse=True)
    rows = np.concatenate([dev_rows, unique])  # every text of the step, each once
    device = next(model.parameters()).device
    groups = torch.as_tensor(inverse.reshape(members.shape), device=device) + len(dev_rows)
    n_dev = len(dev_rows)

    def loss_of(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        member_sims = (emb[:n_dev] @ emb.T)[:, groups]  # (n_dev, topk, subset_size)
        if lexical is not None:
            member_sims = member_sims + weigh_fields(model.lexical_weight, lexical)
        scores = pool_members(member_sims)  # (n_dev, topk)
        return weighted_ranknet(scores, target, config.t_min, config.t_max), scores

    if accelerator is not None and accelerator.num_processes > 1:
        direct = [model.lexical_weight] if lexical is not None else []
        return _shared_step(model, bank, rows, loss_of, config, one_pass, accelerator, direct)
    if one_pass is None:
        one_pass = _fits(model, bank, rows, config)
    if one_pass:
        loss, scores = loss_of(bank.encode(model, rows, config.encode_chunk, config.precision))
        loss.backward()
        return loss.detach(), scores.detach()
    with torch.no_grad():  # pass 1: every text of the step, no graph
        emb = bank.encode(model, rows, config.encode_chunk, config.precision)
    emb.requires_grad_(True)
    loss, scores = loss_of(emb)
    loss.backward()
    cached_grad = emb.grad
    for part in bank.tokens.chunks(rows, config.encode_chunk):  # pass 2: re-encode with a graph
        chunk_emb = bank.encode(model, rows[part], config.encode_chunk, config.precision)
        chunk_emb.backward(cached_grad[torch.as_tensor(part, device=device)])
    return loss.detach(), scores.detach()


def _shared_step(model: AirRepModel, bank: TextBank, rows: np.ndarray,
                 loss_of: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], config: TrainConfig,
                 one_pass: bool | None, accelerator: Accelerator,
                 direct: Sequence[nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ranking_step` with the step's texts dealt across processes.

    Each process encodes only its share of ``rows``: the texts sorted by length and dealt in
    turn, so that the shares cost about the same. The shares' embeddings are summed across
    processes (each row is non-zero in exactly one share), so every process holds the whole
    step's embeddings and computes the same loss; the loss's gradient with respect to its own
    rows then flows back through its own encoder passes (with a graph kept from the first pass
    when its share fits ``activation_budget_mb``, else re-encoded chunk by chunk). Summed over
    processes (:func:`sum_gradients`), the parameters' gradients are the one-process gradient.
    ``direct``: parameters the loss uses outside the encoder (the lexical weight); only the
    main process keeps their gradient, so that the sum counts it once.
    """
    device = next(model.parameters()).device
    order = np.argsort(bank.lengths(rows), kind="stable")
    mine = np.sort(order[accelerator.process_index :: accelerator.num_processes])
    own_rows, position = rows[mine], torch.as_tensor(mine, device=device)
    if one_pass is None:
        one_pass = _fits(model, bank, own_rows, config)
    width = model.projection.out_features
    own = torch.zeros((0, width), device=device)
    if len(own_rows):
        with torch.set_grad_enabled(one_pass):
            own = bank.encode(model, own_rows, config.encode_chunk, config.precision)
    emb = torch.zeros((len(rows), width), device=device).index_copy(0, position, own.detach())
    emb = accelerator.reduce(emb, reduction="sum").requires_grad_(True)  # (len(rows), width), on every process
    loss, scores = loss_of(emb)
    trained = [p for p in direct if p.requires_grad]
    emb_grad, *direct_grads = torch.autograd.grad(loss, [emb, *trained], allow_unused=True)
    if accelerator.is_main_process:
        for param, grad in zip(trained, direct_grads, strict=True):
            if grad is not None:
                param.grad = grad if param.grad is None else param.grad + grad
    own_grad = emb_grad[position]
    if one_pass and own.requires_grad:
        own.backward(own_grad)
    elif not one_pass:
        for part in bank.tokens.chunks(own_rows, config.encode_chunk):
            chunk_emb = bank.encode(model, own_rows[part], config.encode_chunk, config.precision)
            chunk_emb.backward(own_grad[torch.as_tensor(part, device=device)])
    return loss.detach(), scores.detach()


def sum_gradients(params: Sequence[nn.Parameter], accelerator: Accelerator) -> None:
    """Replace each gradient by its sum over processes, in one all-reduce (a process without
    a gradient for a parameter contributes zeros)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    total = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="sum")
    for param, part in zip(params, total.split([g.numel() for g in grads]), strict=True):
        param.grad = part.view_as(param).to(param.dtype)


@dataclass
class PreparedSplit:
    """A split's bank rows, and its dev × pool TF-IDF cosines when the model has the lexical channel."""

    dev_rows: np.ndarray
    pool_rows: np.ndarray
    split: TrainingSplit
    lexical: torch.Tensor | None  # (n_fields, n_dev, n_pool), each field's IDF of the split's pool


def _prepare(bank: TextBank, split: TrainingSplit, fields: Sequence[str] | None) -> PreparedSplit:
    sims = torch.as_tensor(fielded_similarity(split.dev_texts, split.pool_texts, fields)) if fields else None
    return PreparedSplit(bank.rows(split.dev_texts), bank.rows(split.pool_texts), split, sims)


def weigh_fields(weight: torch.Tensor | Sequence[float], lexical: torch.Tensor) -> torch.Tensor:
    """``Σ_f weight[f] · lexical[f]``: the lexical channel's term from per-field cosines
    ``(n_fields, ...)``; a 0-d weight (a model saved before fields) counts as one field."""
    weight = torch.as_tensor(weight, dtype=lexical.dtype, device=lexical.device).reshape(-1)
    return torch.tensordot(weight, lexical, dims=1)


def _validation_sims(model: AirRepModel, bank: TextBank, splits: Sequence[PreparedSplit],
                     config: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Each held-out split's dense dev × pool dot products, with its lexical cosines."""
    out = []
    for prepared in splits:
        dev = bank.encode(model, prepared.dev_rows, config.encode_chunk, config.precision)
        pool = bank.encode(model, prepared.pool_rows, config.encode_chunk, config.precision)
        out.append((dev @ pool.T, prepared.lexical))
    return out


def _lds_of(sims: Sequence[tuple[torch.Tensor, torch.Tensor | None]], splits: Sequence[PreparedSplit],
            lexical_weight: Sequence[float] | None) -> float:
    values = []
    for (dense, lexical), prepared in zip(sims, splits, strict=True):
        pair = dense if lexical_weight is None else dense + weigh_fields(lexical_weight, lexical.to(dense.device))
        scores = pool_groups_shared(pair, torch.as_tensor(prepared.split.subsets, dtype=torch.long,
                                                          device=dense.device))
        values.append(lds(scores.cpu().numpy(), -prepared.split.labels.T))
    return float(np.mean(values))


def validation_lds(model: AirRepModel, bank: TextBank, splits: Sequence[PreparedSplit], config: TrainConfig) -> float:
    """Mean LDS over held-out splits: each dev example's Spearman correlation across its
    split's subsets between the group score and the label (higher label = lower loss)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        weight = model.lexical_weight.detach().reshape(-1).tolist() if model.config.lexical else None
        value = _lds_of(_validation_sims(model, bank, splits, config), splits, weight)
    model.train(was_training)
    return value


HEAD = ("projection.", "log_scale", "lexical_weight")  # what trains at ``projection_lr``
SCALARS = ("log_scale", "lexical_weight")  # no weight decay: it would pull them towards 0


def _pick_scale(model: AirRepModel, bank: TextBank, held_out: Sequence[PreparedSplit],
                config: TrainConfig) -> tuple[float, list[float] | None]:
    """The starting dot-product scale (among ``scale_candidates``) and, for a model with the
    lexical channel, the starting weight of each lexical field (among ``lexical_candidates``
    times the scale, every combination over the fields), jointly best by validation LDS;
    returns ``(scale, per-field lexical weights or None)``.

    The scale sets how sharply attention pooling focuses on a group's most similar members,
    which moved LDS by up to 8 points at step 0 on ShareGPT (cosines × 1 to × 50); the
    channels' balance moved it by as much. Training adjusts them slowly, so they are chosen
    here, on the held-out splits, before the first step. The embeddings are encoded once at
    scale 1; a scale multiplies their dot products. A grid point costs one pooling of the
    held-out splits (milliseconds), so 6 scales × 6² field weights take seconds.
    """
    scales = config.scale_candidates or [(model.log_scale.detach().exp() ** 2).item()]
    n_fields = model.lexical_weight.numel() if model.config.lexical else 0
    ratios = list(itertools.product(config.lexical_candidates, repeat=n_fields)) if n_fields else [None]
    model.set_scale(1.0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        unit = _validation_sims(model, bank, held_out, config)
    model.train(was_training)
    values = {}
    for scale in scales:
        scaled = [(scale * dense, lexical) for dense, lexical in unit]
        for ratio in ratios:
            values[scale, ratio] = _lds_of(scaled, held_out, None if ratio is None else [r * scale for r in ratio])
    scale, ratio = max(values, key=values.get)
    model.set_scale(scale)
    weight = None if ratio is None else [r * scale for r in ratio]
    if weight is not None:
        with torch.no_grad():
            model.lexical_weight.copy_(torch.tensor(weight).reshape(model.lexical_weight.shape))
    best = sorted(values.items(), key=lambda item: -item[1])[:5]
    log.info("starting scale %g, lexical weights %s (validation LDS of %d grid points; best, as scale/weights "
             "over scale: %s)", scale, "-" if weight is None else "/".join(f"{w:g}" for w in weight), len(values),
             ", ".join(f"{s:g}/{'-' if r is None else ','.join(f'{x:g}' for x in r)}: {v:.4f}" for (s, r), v in best))
    return float(scale), weight


def _optimizer(model: AirRepModel, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the projection, the scale and the lexical weight in their own group, at
    ``projection_lr``; the two scalars get no weight decay (it would pull the temperature
    towards 1 and the lexical weight towards 0)."""
    projection = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(HEAD)]
    others = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(HEAD)]
    scale = [p for n, p in model.named_parameters() if p.requires_grad and n in SCALARS]
    projection = [p for p in projection if all(p is not q for q in scale)]
    groups = [{"params": projection, "lr": config.projection_lr or config.lr},
              {"params": scale, "lr": config.projection_lr or config.lr, "weight_decay": 0.0}]
    if others:
        groups.append({"params": others, "lr": config.lr})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def _set_dropout(model: AirRepModel, probability: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability


@dataclass
class TrainingRun:
    """What every step of one run works on: the model, its text bank, the prepared splits,
    the processes, and the generator that draws the steps (seeded alike in every process, so
    that all processes draw the same steps)."""

    airrep: AirRep
    bank: TextBank
    train_splits: list[PreparedSplit]
    held_out: list[PreparedSplit]
    accelerator: Accelerator
    rng: np.random.Generator
    cache_seconds: float = 0.0

    @property
    def model(self) -> AirRepModel:
        return self.airrep.model

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


@dataclass
class StepBatch:
    """One step's draw: a training split, its chosen dev examples and subsets."""

    split: PreparedSplit
    dev: np.ndarray  # indices into the split's dev examples
    subsets: np.ndarray  # indices into the split's subsets


def start_training(splits: Sequence[TrainingSplit], config: TrainConfig, airrep: AirRep | None = None,
                   show_progress_bar: bool = False) -> TrainingRun:
    """The model on this process's device, its trained part set by ``config``, every text
    tokenized (and its frozen layers computed once), every split prepared."""
    if not splits:
        raise ValueError("no labelled splits to train on; run label generation first")
    if config.validation_splits >= len(splits):
        raise ValueError(f"train.validation_splits ({config.validation_splits}) leaves no split to train on "
                         f"({len(splits)} labelled); lower it or label more splits (sampling.n_splits)")
    torch.manual_seed(config.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    airrep = airrep or AirRep.from_encoder(
        config.encoder, precision=config.precision, layers=config.encoder_layers, normalize=config.normalize,
        initial_scale=config.initial_scale, projection_dim=config.projection_dim, lexical=config.lexical,
        lexical_fields=config.lexical_fields)
    model = airrep.model.to(accelerator.device)
    model.config.max_tokens = config.max_tokens
    model.config.lexical = config.lexical
    model.freeze_below(config.trainable_layers)
    model.log_scale.requires_grad_(config.train_scale)
    model.lexical_weight.requires_grad_(bool(model.config.lexical) and config.train_scale)
    n_train = len(splits) - config.validation_splits

    texts = [t for s in splits for t in (*s.dev_texts, *s.pool_texts)]
    bank = TextBank(airrep.tokenizer, texts, config.max_tokens)
    cache_seconds = 0.0
    if config.trainable_layers is not None and config.frozen_cache and model.can_split:
        cache_seconds = bank.build_cache(model, len(model.blocks()) - config.trainable_layers, config.encode_chunk,
                                         config.precision, show_progress_bar=show_progress_bar)
        log.info("frozen layers computed once for %d texts in %.0f s", len(bank), cache_seconds)
    fields = airrep.lexical_fields
    prepared = [_prepare(bank, s, fields) for s in splits]
    # Seeded alike in every process; ``[seed, 0]`` is the stream one-process training has always
    # drawn (it was seeded with the process index), so its models and results are unchanged.
    return TrainingRun(airrep, bank, prepared[:n_train], prepared[n_train:], accelerator,
                       np.random.default_rng([config.seed, 0]), cache_seconds)


def draw_step(run: TrainingRun, config: TrainConfig) -> StepBatch:
    """A training split, up to ``reference_size`` of its dev examples and ``topk`` of its subsets."""
    split = run.train_splits[int(run.rng.integers(len(run.train_splits)))]
    n_subsets, n_dev = split.split.labels.shape
    dev = run.rng.choice(n_dev, size=min(config.reference_size, n_dev), replace=False)
    subsets = run.rng.choice(n_subsets, size=min(config.topk, n_subsets), replace=False)
    return StepBatch(split, dev, subsets)


def step_gradient(run: TrainingRun, batch: StepBatch,
                  config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's whole gradient in every process's ``.grad`` (summed over processes);
    returns ``(loss, scores, target)``, the same in every process."""
    device = run.accelerator.device
    split = batch.split.split
    target = torch.as_tensor(split.labels[np.ix_(batch.subsets, batch.dev)].T, dtype=torch.float32,
                             device=device)  # (n_ref, topk)
    lexical = batch.split.lexical
    if lexical is not None:  # (n_fields, n_ref, topk, subset_size)
        lexical = lexical[:, torch.as_tensor(batch.dev)][:, :, torch.as_tensor(split.subsets[batch.subsets])]
        lexical = lexical.to(device)
    loss, scores = ranking_step(run.model, run.bank, batch.split.dev_rows[batch.dev],
                                batch.split.pool_rows[split.subsets[batch.subsets]], target, config,
                                lexical=lexical, accelerator=run.accelerator)
    if run.accelerator.num_processes > 1:
        sum_gradients(run.trainable, run.accelerator)
    return loss, scores, target


def _main_decides(flag: bool, accelerator: Accelerator) -> bool:
    """The main process's ``flag`` in every process (validation runs on the main process only)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(broadcast(torch.tensor([int(flag)], device=accelerator.device), from_process=0).item())


def train_airrep(
    splits: Sequence[TrainingSplit],
    config: TrainConfig,
    out_dir: str | Path | None = None,
    airrep: AirRep | None = None,
    show_progress_bar: bool = True,
) -> tuple[AirRep, TrainingCurve]:
    """Train AirRep on labelled splits; return the model and its training curve.

    The last ``config.validation_splits`` splits are held out for validation (see the module
    docstring); with none, the last step's weights are kept. Checkpoints go to
    ``out_dir/checkpoint-<step>`` every ``checkpoint_every`` steps, the kept model to ``out_dir``.
    Under ``accelerate launch`` every process calls this; only the main process's curve holds
    the validation results, and only it writes.
    """
    run = start_training(splits, config, airrep, show_progress_bar)
    airrep, model, accelerator = run.airrep, run.model, run.accelerator
    main = accelerator.is_main_process
    curve = TrainingCurve(cache_seconds=run.cache_seconds, processes=accelerator.num_processes)
    optimizer = _optimizer(model, config)
    # Not accelerator.prepare'd: its scheduler wrapper steps once per process at every step
    # (for processes that each took a batch of their own), and the gradients are summed here.
    schedule = get_scheduler({"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[
        config.schedule], optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps)
    _set_dropout(model, config.dropout)
    # Dropout off unless configured: the ranking signal is noisy enough on its own.
    model.train(config.dropout > 0)
    best_lds, best_state, stale = -np.inf, None, 0
    if run.held_out and (config.scale_candidates or model.config.lexical):
        curve.initial_scale, curve.initial_lexical_weight = _pick_scale(model, run.bank, run.held_out, config)
    if run.held_out and main:  # step 0: the untrained model, kept if nothing beats it
        best_lds = validation_lds(model, run.bank, run.held_out, config)
        best_state = copy.deepcopy({n: p.detach() for n, p in model.named_parameters() if p.requires_grad})
        curve.eval_step.append(0)
        curve.eval_lds.append(best_lds)
        curve.best_step = 0
        log.info("step 0: validation LDS %.4f", best_lds)
    start = time.perf_counter()
    for step in tqdm(range(1, config.steps + 1), desc="train AirRep", disable=not (show_progress_bar and main)):
        loss, scores, target = step_gradient(run, draw_step(run, config), config)
        torch.nn.utils.clip_grad_norm_(run.trainable, config.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"AirRep training loss became {loss.item()} at step {step}; lower train.lr")
        curve.step.append(step)
        curve.loss.append(float(loss))
        curve.pair_accuracy.append(pairwise_accuracy(scores, target, config.t_min))
        curve.label_pairs += target.numel()
        if not show_progress_bar and main and step % max(1, config.steps // 10) == 0:
            # Orchestrated runs have no terminal for a bar: a tenth of the way, a log line.
            log.info("step %d/%d: loss %.4f, pair accuracy %.3f, %.0f s", step, config.steps,
                     float(np.mean(curve.loss[-10:])), float(np.mean(curve.pair_accuracy[-10:])),
                     time.perf_counter() - start)
        due = step % config.eval_every == 0 or step == config.steps
        stop = False
        if run.held_out and main and due:
            value = validation_lds(model, run.bank, run.held_out, config)
            curve.eval_step.append(step)
            curve.eval_lds.append(value)
            log.info("step %d: loss %.4f, validation LDS %.4f", step, float(np.mean(curve.loss[-10:])), value)
            if value > best_lds:
                best_lds, stale, curve.best_step = value, 0, step
                best_state = copy.deepcopy({n: p.detach() for n, p in model.named_parameters() if p.requires_grad})
            else:
                stale += 1
            stop = config.patience is not None and stale >= config.patience
            if stop:
                log.info("validation LDS has not improved for %d evaluations: stopping at step %d", stale, step)
        if run.held_out and due and _main_decides(stop, accelerator):
            break
        if out_dir is not None and main and step % config.checkpoint_every == 0 and step != config.steps:
            airrep.save_pretrained(Path(out_dir) / f"checkpoint-{step}")
    curve.seconds = time.perf_counter() - start
    if best_state is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in best_state:
                    param.copy_(best_state[name])
    _set_dropout(model, 0.0)
    model.eval()
    if out_dir is not None and main:
        airrep.save_pretrained(out_dir)
    return airrep, curve
