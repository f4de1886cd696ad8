"""The two questions users ask of a trained AirRep, as one call each, without the pipeline.

- :func:`attribute`: which training examples does each query come from? The ``k`` highest
  pair scores per query (paper §3.1: ``Enc(x)·Enc(z)``, plus the weighted TF-IDF cosine for
  a model with the lexical channel, its IDF fitted on ``corpus``).
- :func:`select`: which candidates should I train on for these targets? The ``budget``
  candidates with the highest mean pair score over the targets.

Queries, corpus items, targets and candidates may be formatted texts, :class:`Record`\\ s,
``(prompt, response)`` pairs or mappings with ``prompt`` and ``response`` (or ``text``); the
formatting every model sees (:func:`airrep.data.format_example`) is applied here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from airrep.data import Record, format_example, format_record
from airrep.model import AirRep

Item = str | Record | tuple[str, str] | Mapping[str, Any]


def as_text(item: Item) -> str:
    """The formatted text of one query or corpus item."""
    if isinstance(item, str):
        return item
    if isinstance(item, Record):
        return format_record(item)
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(part, str) for part in item):
        return format_example(*item)
    if isinstance(item, Mapping):
        if isinstance(item.get("prompt"), str) and isinstance(item.get("response"), str):
            return format_example(item["prompt"], item["response"])
        if isinstance(item.get("text"), str):
            return item["text"]
    raise TypeError(f"cannot read an example from {type(item).__name__} {str(item)[:80]!r}: give a formatted "
                    "text, a Record, a (prompt, response) pair, or a mapping with 'prompt' and 'response' "
                    "(or 'text')")


def item_id(item: Item, index: int) -> str:
    """A record's or mapping's own id, else its position."""
    if isinstance(item, Record):
        return item.id
    if isinstance(item, Mapping) and item.get("id") is not None:
        return str(item["id"])
    return str(index)


@dataclass(frozen=True)
class Attribution:
    """The top ``k`` corpus items of each query, best first: arrays of shape ``(n_queries, k)``."""

    indices: np.ndarray
    scores: np.ndarray
    ids: list[list[str]]


@dataclass(frozen=True)
class Selection:
    """The chosen candidates, best first, and every candidate's score (input order)."""

    indices: np.ndarray
    ids: list[str]
    scores: np.ndarray


def attribute(model: AirRep, queries: Sequence[Item], corpus: Sequence[Item], k: int = 10,
              batch_size: int = 32, show_progress_bar: bool = False) -> Attribution:
    """The ``k`` corpus items with the highest pair score for each query."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    query_texts, corpus_texts = [as_text(q) for q in queries], [as_text(c) for c in corpus]
    if not corpus_texts:
        raise ValueError("the corpus is empty: give at least one training example to attribute to")
    if not query_texts:
        width = min(k, len(corpus_texts))
        return Attribution(np.zeros((0, width), np.int64), np.zeros((0, width), np.float32), [])
    corpus_emb = model.encode(corpus_texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
    query_emb = model.encode(query_texts, batch_size=batch_size)
    index = model.lexical_index(corpus_texts)
    extra = None if index is None else model.lexical_scores(query_texts, index)
    scores, indices = AirRep.top_k(query_emb, corpus_emb, k=k, extra=extra)
    ids = [item_id(c, i) for i, c in enumerate(corpus)]
    return Attribution(indices, scores, [[ids[i] for i in row] for row in indices])


def select(model: AirRep, targets: Sequence[Item], candidates: Sequence[Item], budget: int,
           batch_size: int = 32, show_progress_bar: bool = False) -> Selection:
    """The ``budget`` candidates whose mean pair score over ``targets`` is highest.

    The mean of dot products with every target is the dot product with the targets' mean, for
    the embeddings and for the TF-IDF rows alike, so scoring costs one pass over the candidates
    whatever the number of targets.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    if not targets:
        raise ValueError("no targets: give the examples of the task to select training data for")
    if budget > len(candidates):
        raise ValueError(f"budget {budget} exceeds the {len(candidates)} candidates")
    target_texts, candidate_texts = [as_text(t) for t in targets], [as_text(c) for c in candidates]
    centroid = model.encode(target_texts, batch_size=batch_size).mean(axis=0)
    scores = model.encode(candidate_texts, batch_size=batch_size, show_progress_bar=show_progress_bar) @ centroid
    index = model.lexical_index(candidate_texts)
    if index is not None:
        scores = scores + index.mean_similarity(target_texts, model.lexical_weight)
    chosen = np.argsort(-scores, kind="stable")[:budget]
    return Selection(chosen, [item_id(candidates[i], int(i)) for i in chosen], scores.astype(np.float32))
