"""Gradient-based training-data attribution on the base LLM, taken from dattri 0.3.0.

The paper compares AirRep with attribution methods that read the base LLM's gradients.
They are not reimplemented here: each one is the maintained implementation in dattri
(``dattri.algorithm``, Deng et al., "dattri: a library for efficient data attribution",
NeurIPS 2024 D&B), fed the project's own loss. This module only supplies that loss and the
batches, and turns dattri's ``(n_train, n_test)`` result into ``(n_test, n_train)`` scores.

- **LoGra** (Choe et al., 2024, "What is your data worth to GPT?"): influence functions
  on gradients of every ``nn.Linear`` layer, projected per layer by a Kronecker product of
  two small Gaussian projections (input side x output side) so that the full gradient is
  never formed; the Hessian is the per-layer empirical Fisher of the projected train
  gradients. ``dattri.algorithm.logra.LoGraAttributor``; ``proj_dim`` is per layer (a
  perfect square), so a train example stores ``proj_dim x n_linear_layers`` numbers.
- **TracIn** (Pruthi et al., 2020): the dot product of a test and a train loss gradient,
  summed over checkpoints weighted by learning rate. Only the base model is available, so
  this is the one-checkpoint form (Grad-Dot), on all parameters, randomly projected to
  ``proj_dim`` numbers. ``dattri.algorithm.tracin.TracInAttributor``.
- **TRAK** (Park et al., 2023): projected gradients of the model output function
  ``log(p / (1 - p))`` with ``p = exp(-loss)``, the train-set kernel ``(X^T X)^{-1}``
  and the per-example weight ``1 - p`` (the output function and ``p`` for language models
  are those of dattri's own GPT-2/WikiText experiment). One checkpoint, no ensemble.
  ``dattri.algorithm.trak.TRAKAttributor``.

All three run on an HF causal LM. LoGra hooks ``nn.Linear`` layers: a GPT-2's ``Conv1D``
layers (the same affine map with the weight stored transposed) are converted to
``nn.Linear`` in LoGra's copy of the model first (:func:`conv1d_as_linear`). On 2 CPU cores, 100 test x
400 ShareGPT train examples (max 160 tokens) on an untrained LM of the tiny config's shape
(hidden 128, 2 layers, vocabulary 8000, 1.55M parameters) took, with the defaults here:
LoGra 138 s (61,440 numbers per train example: 15 linear layers x 64 x 64; 12.5 s at
``proj_dim=256``), TRAK 145 s and TracIn 515 s (512 numbers each). On CPU dattri's
projector for TracIn and TRAK holds an ``n_params x 100`` fp32 matrix, 54 GB for a 135M
model: beyond tiny LMs they need a GPU and dattri's sparse projector (``proj_type="sjlt"``,
CUDA only; not exercised here).

The loss is the project's fine-tuning loss: the mean cross-entropy over an example's
response tokens (``tokenize_records`` masks the prompt). Batches are right-padded and the
model sees no attention mask: under causal attention a real position never attends to the
padding after it, so the logits of real positions are exactly those of the unpadded
example, and the loss never reads padded positions. This keeps the per-example function
free of data-dependent masking, which ``torch.func.vmap`` (TracIn, TRAK) cannot trace.

Sign: a higher score means the train example is more helpful, i.e. training on it lowers
the test example's loss (TracIn: ``g_test . g_train``; LoGra: ``g_test H^-1 g_train``;
TRAK: positive when the train example raises the test example's log-odds).

Where this departs from dattri's defaults, and why:

- All: projections are seeded with ``seed`` (dattri: 0; LoGraAttributor has no seed
  argument, so its ``sparsifier_kwargs`` are given one) and run on the model's device.
- TracIn and TRAK keep their projector settings in a module-level dict that dattri's
  constructors mutate; each attributor here gets its own copy, so no call changes the next.
- LoGra: ``damping`` is ``RELATIVE_DAMPING`` (1e-2 of the mean eigenvalue, the value of
  dattri's own GPT-2 LoGra example) instead of 1e-5: with fewer train examples than the
  per-layer dimension the empirical Fisher is singular, and at 1e-5 its Cholesky fails
  and dattri falls back to a plain inverse. Its compressor is wrapped in
  ``torch.compile``; here it runs eagerly (``torch.compiler.set_stance("force_eager")``),
  the same arithmetic, because on CPU compiling for every layer and sequence length costs
  more than it saves. Gradients are kept in memory (``offload="none"``).
- TRAK: dattri's ``regularization=0`` makes ``X^T X`` singular whenever there are fewer
  train examples than projection dimensions; it is ``RELATIVE_DAMPING`` times the
  kernel's mean eigenvalue, estimated from a sample of train gradients.
- TracIn and TRAK batch as many examples per vmapped gradient pass as
  ``PER_SAMPLE_GRADIENT_BUDGET`` allows (at least about ``batch_size``): on CPU dattri
  regenerates its projection matrix for every batch, and TracIn recomputes every test
  gradient once per train batch. Batching does not change the scores.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from airrep.data import Record
from airrep.extras import require
from airrep.finetune import IGNORE, TokenizedExample, collate, tokenize_records

log = logging.getLogger(__name__)

METHODS = ("logra", "tracin", "trak")
# dattri's own defaults: LoGraAttributor(proj_dim=4096) is per layer (64 x 64);
# TracIn's and TRAK's DEFAULT_PROJECTOR_KWARGS use 512 dimensions for all parameters.
DEFAULT_PROJ_DIM = {"logra": 4096, "tracin": 512, "trak": 512}
# Damping relative to the mean eigenvalue of the matrix it regularises (dattri's GPT-2
# LoGra example uses 1e-2; its default 1e-5 fails Cholesky when n_train << proj_dim).
RELATIVE_DAMPING = 1e-2
# Peak memory allowed for one vmapped per-example-gradient batch (TracIn, TRAK); see
# _per_sample_batch_size for what an example costs.
PER_SAMPLE_GRADIENT_BUDGET = 4 << 30
TRAK_DAMPING_SAMPLE = 16


@dataclass
class GradientScores:
    scores: np.ndarray  # (n_test, n_train); higher = the train example lowers the test loss more
    dim: int  # numbers stored per train example
    seconds: float  # wall time of the whole attribution
    method: str


def response_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each row's response tokens, ``(batch,)``.

    ``logits`` is ``(batch, seq, vocab)``; ``labels`` is ``(batch, seq)`` with ``IGNORE`` on
    prompt and padding positions. Position ``t`` predicts token ``t + 1``.
    """
    targets = labels[:, 1:]
    token_losses = nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none"
    ).view_as(targets)
    counts = (targets != IGNORE).sum(dim=1).clamp_min(1)
    return token_losses.sum(dim=1) / counts


class _MeanResponseLoss(nn.Module):
    """The LM with a forward that returns the batch mean of the per-example losses.

    LoGra hooks the ``nn.Linear`` layers of this module and reads ``outputs.loss``; its
    compressor multiplies by the batch size, which turns the gradient of this batch mean
    back into each example's own gradient.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        logits = self.lm(input_ids=input_ids).logits
        return SimpleNamespace(loss=response_losses(logits, labels).mean())


def _tensor_batch(examples: Sequence[TokenizedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate(examples, pad_id)
    return batch["input_ids"], batch["labels"]


def _dict_batch(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    input_ids, labels = _tensor_batch(examples, pad_id)
    return {"input_ids": input_ids, "labels": labels}


def _loader(examples: Sequence[TokenizedExample], pad_id: int, batch_size: int, as_dict: bool) -> DataLoader:
    """An unshuffled loader (dattri maps batch ``i`` to rows ``i * batch_size ...``)."""
    make = _dict_batch if as_dict else _tensor_batch
    return DataLoader(list(examples), batch_size=batch_size, shuffle=False,
                      collate_fn=lambda chunk: make(chunk, pad_id))


def _per_example_functions(lm: nn.Module) -> tuple[Callable, Callable, Callable]:
    """``torch.func``-style functions of ``(params, one_example)`` for TracIn and TRAK.

    dattri vmaps them over the batch, so each sees a single ``(input_ids, labels)`` pair
    without its batch dimension. Returns ``(loss, trak_output, trak_probability)``.
    """
    # vmap has no batching rule for the CPU SDPA kernel and would loop over examples.
    lm.set_attn_implementation("eager")

    def loss(params, example):
        input_ids, labels = example
        logits = torch.func.functional_call(lm, params, (), {"input_ids": input_ids.unsqueeze(0)}).logits
        return response_losses(logits, labels.unsqueeze(0))[0]

    def trak_output(params, example):
        # TRAK's output function log(p / (1 - p)) with p = exp(-loss), as in dattri's LM example.
        log_p = -loss(params, example)
        return log_p - torch.log(-torch.expm1(log_p))

    def trak_probability(params, example):
        return torch.exp(-loss(params, example))

    return loss, trak_output, trak_probability


def _length_order(examples: Sequence[TokenizedExample]) -> np.ndarray:
    """Indices that sort examples by length, so a batch pads to similar lengths."""
    return np.argsort([len(e.input_ids) for e in examples], kind="stable")


def _per_sample_batch_size(lm: nn.Module, max_length: int, batch_size: int, n_examples: int) -> int:
    """Batch size for vmapped per-example gradients: the larger of ``batch_size`` and what
    ``PER_SAMPLE_GRADIENT_BUDGET`` allows, evened out so the last batch is not a sliver.

    dattri's CPU projector regenerates its Gaussian matrix (n_params x 100 per block) for
    every batch, and TracIn recomputes all test gradients for every train batch, so on CPU
    the number of batches, not their size, sets the cost.
    """
    n_params = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    # fp32 bytes: a few gradient-sized buffers and about 16 logits-sized ones, as measured
    # (peak RSS per example) on the tiny config's LM, where the logits dominate.
    per_example = 4 * (3 * n_params + 16 * max_length * lm.get_output_embeddings().out_features)
    largest = max(batch_size, PER_SAMPLE_GRADIENT_BUDGET // per_example)
    n_batches = -(-n_examples // largest)
    return -(-n_examples // n_batches)


def conv1d_as_linear(model: nn.Module) -> nn.Module:
    """``model`` with every transformers ``Conv1D`` (GPT-2: ``y = x W + b``, ``W`` of shape
    ``(in, out)``) replaced in place by the equal ``nn.Linear`` (weight ``W^T``), so that
    LoGra, which hooks ``nn.Linear`` layers, sees every layer of a GPT-2 as it does a Llama's."""
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.nf, bias=child.bias is not None,
                                   device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
    return model


def _logra(lm, train, test, pad_id, proj_dim, batch_size, seed, device, max_length) -> tuple[torch.Tensor, int]:
    from dattri.algorithm.logra import LoGraAttributor
    from dattri.task import AttributionTask

    wrapped = _MeanResponseLoss(conv1d_as_linear(lm))

    def batch_loss(model, batch, device):
        return model(**{k: v.to(device) for k, v in batch.items()}).loss

    task = AttributionTask(loss_func=batch_loss, model=wrapped, checkpoints=wrapped.state_dict())
    train_loader = _loader(train, pad_id, batch_size, as_dict=True)
    # dattri writes (and, if one is there, reads back) batch_metadata.json in cache_dir,
    # the working directory unless given: a private directory keeps runs apart.
    with tempfile.TemporaryDirectory(prefix="airrep-logra-") as cache_dir:
        attributor = LoGraAttributor(
            task=task, device=device, proj_dim=proj_dim, damping=RELATIVE_DAMPING, offload="none",
            cache_dir=cache_dir,
        )
        attributor.sparsifier_kwargs["proj_seed"] = seed
        with torch.compiler.set_stance("force_eager"):
            attributor.cache(train_loader)
            scores = attributor.attribute(train_loader, _loader(test, pad_id, batch_size, as_dict=True))
    return scores, int(attributor.total_proj_dim)


def _projector_kwargs(proj_dim: int, seed: int, device: str, defaults: dict) -> dict:
    return {**copy.deepcopy(defaults), "proj_dim": proj_dim, "proj_seed": seed, "device": device}


def _tracin(lm, train, test, pad_id, proj_dim, batch_size, seed, device, max_length) -> tuple[torch.Tensor, int]:
    from dattri.algorithm import tracin
    from dattri.task import AttributionTask

    loss, _, _ = _per_example_functions(lm)
    task = AttributionTask(loss_func=loss, model=lm, checkpoints=lm.state_dict())
    # Grad-Dot: one checkpoint (the base model), unit weight, unnormalised gradients.
    attributor = tracin.TracInAttributor(task=task, weight_list=torch.ones(1), normalized_grad=False,
                                         device=device)
    attributor.projector_kwargs = _projector_kwargs(proj_dim, seed, device, tracin.DEFAULT_PROJECTOR_KWARGS)
    scores = attributor.attribute(
        _loader(train, pad_id, _per_sample_batch_size(lm, max_length, batch_size, len(train)), as_dict=False),
        _loader(test, pad_id, _per_sample_batch_size(lm, max_length, batch_size, len(test)), as_dict=False),
    )
    return scores, proj_dim


def _trak(lm, train, test, pad_id, proj_dim, batch_size, seed, device, max_length) -> tuple[torch.Tensor, int]:
    from dattri.algorithm import trak
    from dattri.task import AttributionTask

    _, output, probability = _per_example_functions(lm)
    task = AttributionTask(loss_func=output, model=lm, checkpoints=lm.state_dict())
    regularization = _trak_regularization(task, train, pad_id, proj_dim, batch_size, device)
    attributor = trak.TRAKAttributor(
        task=task, correct_probability_func=probability, device=device, regularization=regularization
    )
    attributor.projector_kwargs = _projector_kwargs(proj_dim, seed, device, trak.DEFAULT_PROJECTOR_KWARGS)
    attributor.cache(
        _loader(train, pad_id, _per_sample_batch_size(lm, max_length, batch_size, len(train)), as_dict=False)
    )
    with torch.no_grad():
        scores = attributor.attribute(
            _loader(test, pad_id, _per_sample_batch_size(lm, max_length, batch_size, len(test)), as_dict=False)
        )
    return scores, proj_dim


def _trak_regularization(task, train, pad_id: int, proj_dim: int, batch_size: int, device: str) -> float:
    """``RELATIVE_DAMPING`` x the mean eigenvalue of TRAK's kernel ``X^T X`` (``proj_dim`` square).

    The kernel's trace is the summed squared norm of the projected train gradients, which
    TRAK scales by ``1 / sqrt(n_params)``; a Gaussian projection keeps squared norms in
    expectation, so the unprojected gradients of ``TRAK_DAMPING_SAMPLE`` train examples,
    spread over the length order, estimate it.
    """
    params, _ = task.get_param(ckpt_idx=0)
    gradient_of = task.get_grad_loss_func(in_dims=(None, 0))
    picks = np.unique(np.linspace(0, len(train) - 1, min(TRAK_DAMPING_SAMPLE, len(train))).astype(int))
    squared_norms = []
    for first in range(0, len(picks), batch_size):
        batch = _tensor_batch([train[i] for i in picks[first : first + batch_size]], pad_id)
        gradients = torch.nan_to_num(gradient_of(params, tuple(t.to(device) for t in batch)))
        squared_norms.append(gradients.detach().pow(2).sum(dim=1))
    mean_square = float(torch.cat(squared_norms).mean()) / params.numel()
    return RELATIVE_DAMPING * mean_square * len(train) / proj_dim


_RUNNERS = {"logra": _logra, "tracin": _tracin, "trak": _trak}


def proj_dim_for(method: str, model: nn.Module, numbers: int) -> int:
    """The ``proj_dim`` that keeps at most ``numbers`` values per train example.

    TracIn and TRAK project all parameters at once, so it is ``numbers``. LoGra projects
    each ``nn.Linear`` layer (all of them, the output head included) to a perfect square, so
    it is the largest square with ``square x n_linear <= numbers`` (at least 1): for 15
    linear layers and 384 numbers, 25 per layer, 375 in all.
    """
    if numbers < 1:
        raise ValueError(f"a storage budget must be at least 1 number per example, not {numbers}")
    if method != "logra":
        return numbers
    from transformers.pytorch_utils import Conv1D

    n_linear = sum(isinstance(m, (nn.Linear, Conv1D)) for m in model.modules())
    side = max(1, int((numbers / max(n_linear, 1)) ** 0.5))
    return side * side


def gradient_scores(
    method: str,
    model: torch.nn.Module,
    tokenizer,
    train_records: Sequence[Record],
    test_records: Sequence[Record],
    max_length: int = 160,
    proj_dim: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> GradientScores:
    """Attribution scores of every train record for every test record, ``(n_test, n_train)``.

    ``method`` is ``"logra"``, ``"tracin"`` or ``"trak"``; ``proj_dim`` defaults to dattri's
    default for that method (``DEFAULT_PROJ_DIM``). ``model`` (an fp32 HF causal LM) is
    copied, never modified. ``dim`` is the number of values stored per train example.
    """
    if method not in _RUNNERS:
        raise ValueError(f"unknown gradient baseline {method!r}; choose one of {', '.join(METHODS)}")
    require("dattri", "baselines", f"the {method} baseline")
    if not train_records or not test_records:
        raise ValueError("gradient_scores needs at least one train and one test record")
    proj_dim = DEFAULT_PROJ_DIM[method] if proj_dim is None else proj_dim
    start = time.perf_counter()
    torch.manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train = tokenize_records(tokenizer, train_records, max_length)
    test = tokenize_records(tokenizer, test_records, max_length)
    train_order, test_order = _length_order(train), _length_order(test)
    lm = copy.deepcopy(model).float().eval()
    device = str(next(lm.parameters()).device)
    sorted_scores, dim = _RUNNERS[method](
        lm, [train[i] for i in train_order], [test[i] for i in test_order], pad_id, proj_dim,
        batch_size, seed, device, max_length,
    )  # (n_train, n_test), both in length order
    scores = np.empty((len(test), len(train)), dtype=np.float64)
    scores[np.ix_(test_order, train_order)] = sorted_scores.detach().cpu().double().numpy().T
    seconds = time.perf_counter() - start
    log.info("%s scores for %d test x %d train in %.1f s (%d numbers per train example)",
             method, len(test), len(train), seconds, dim)
    return GradientScores(scores=scores, dim=dim, seconds=seconds, method=method)


def gradient_features(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Record],
    max_length: int = 160,
    proj_dim: int = 512,
    batch_size: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """Each record's response-loss gradient on all LM parameters, randomly projected to
    ``proj_dim`` numbers, ``(n, proj_dim)``: the per-example vectors whose dot products are
    TracIn's (Grad-Dot) scores, for uses that need features rather than scores (e.g. the
    task-classification probe). The projection is dattri's ``random_project`` with one fixed
    seed, so every record is mapped by the same matrix.
    """
    from dattri.func.projection import random_project
    from dattri.task import AttributionTask

    if not records:
        raise ValueError("gradient_features needs at least one record")
    require("dattri", "baselines", "projected gradient features")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = tokenize_records(tokenizer, records, max_length)
    order = _length_order(examples)
    lm = copy.deepcopy(model).float().eval()
    device = str(next(lm.parameters()).device)
    loss, _, _ = _per_example_functions(lm)
    task = AttributionTask(loss_func=loss, model=lm, checkpoints=lm.state_dict())
    params, _ = task.get_param(ckpt_idx=0)
    gradient_of = task.get_grad_loss_func(in_dims=(None, 0))
    size = _per_sample_batch_size(lm, max_length, batch_size, len(examples))
    features = np.empty((len(examples), proj_dim), dtype=np.float32)
    for first in range(0, len(order), size):
        rows = order[first : first + size]
        batch = _tensor_batch([examples[i] for i in rows], pad_id)
        grads = torch.nan_to_num(gradient_of(params, tuple(t.to(device) for t in batch))).detach()
        project = random_project(grads, grads.shape[0], proj_dim=proj_dim, proj_max_batch_size=32,
                                 proj_seed=seed, device=device)
        features[rows] = project(grads, ensemble_id=0).cpu().float().numpy()
    return features
