"""Lexical similarity: the cosine of sublinear TF-IDF vectors (scikit-learn), fitted on a corpus.

One definition for every user of word overlap: the TF-IDF baseline of the LDS table, and
AirRep's lexical channel (``AirRepConfig.lexical``), which adds ``lexical_weight`` times this
cosine to the embeddings' dot product. The IDF comes from the corpus being attributed (a
split's pool in training, the benchmark's pool in evaluation, the served corpus in serving),
never from the queries, so a query scores the same whatever else is asked with it.

Why AirRep has such a channel: a fine-tune of a small base LM changes mostly which tokens
the LM expects, and a 384-d mean-pooled sentence embedding keeps only a blur of token
identity, which a linear head cannot restore (benchmarks/RESULTS.md). The sparse vector keeps
it; the trained dense part then scores what word overlap misses.

Why the channel is split by field (:class:`FieldedIndex`): a fine-tune's loss, and so its
label, is over response tokens, and an example teaches the LM its response given its prompt.
One cosine over the whole text lets a long shared instruction outweigh the response words the
loss is measured on. AirRep keeps one cosine per field (the prompt part, the response, or the
whole text), each with its own IDF and its own trained weight, so training sets how much each
kind of overlap matters. On both bench datasets' validation splits, untrained, the two-field
score (prompt and response) lifted the mean LDS×100 of pooled TF-IDF cosines from 28.4 to
32.5 (ShareGPT) and from 34.2 to 40.9 (Natural Instructions) over the whole-text cosine, each
at its best scale and weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import sparse

from airrep.data import split_formatted


class LexicalIndex:
    """A corpus's L2-normalised TF-IDF rows; :meth:`similarity` scores query texts against them."""

    def __init__(self, corpus: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(sublinear_tf=True)
        self.size = len(corpus)
        self.matrix = None
        if any(text.strip() for text in corpus):
            try:
                self.matrix = self.vectorizer.fit_transform(list(corpus))
            except ValueError:  # no word scikit-learn keeps (e.g. only one-letter tokens): nothing to match
                self.matrix = None

    @property
    def vocabulary_size(self) -> int:
        return len(getattr(self.vectorizer, "vocabulary_", {}))

    @property
    def bytes_per_row(self) -> float:
        """Mean bytes a corpus row takes as stored here (CSR: values, column indices, row pointer)."""
        if self.matrix is None or not self.matrix.shape[0]:
            return 0.0
        m = self.matrix
        return (m.data.nbytes + m.indices.nbytes + m.indptr.nbytes) / m.shape[0]

    def similarity(self, queries: Sequence[str]) -> sparse.csr_matrix:
        """Cosines ``(n_queries, n_corpus)``, sparse: a pair sharing no word scores 0."""
        if self.matrix is None:
            return sparse.csr_matrix((len(queries), self.size), dtype=np.float32)
        return (self.vectorizer.transform(list(queries)) @ self.matrix.T).astype(np.float32).tocsr()

    def mean_similarity(self, queries: Sequence[str]) -> np.ndarray:
        """Each corpus row's mean cosine over ``queries``, ``(n_corpus,)``: one product with the
        queries' mean row, not the ``(n_queries, n_corpus)`` matrix of :meth:`similarity`."""
        if self.matrix is None:
            return np.zeros(self.size, dtype=np.float32)
        centroid = np.asarray(self.vectorizer.transform(list(queries)).mean(axis=0))  # (1, vocabulary)
        return np.asarray(self.matrix @ centroid.T, dtype=np.float32).ravel()


def lexical_similarity(queries: Sequence[str], corpus: Sequence[str]) -> np.ndarray:
    """Dense cosines ``(n_queries, n_corpus)`` with the IDF of ``corpus``."""
    return LexicalIndex(corpus).similarity(queries).toarray()


# The parts of a formatted example (airrep.data.format_example) a lexical field reads.
FIELDS = ("text", "prompt", "response")
Field = Literal["text", "prompt", "response"]


def field_text(text: str, field: str) -> str:
    """``text`` itself, its prompt part (instruction and marker) or its response."""
    if field == "text":
        return text
    prompt, response = split_formatted(text)
    if field == "prompt":
        return prompt
    if field == "response":
        return response
    raise ValueError(f"unknown lexical field {field!r}; use one of {', '.join(FIELDS)}")


class FieldedIndex:
    """One :class:`LexicalIndex` per field of a corpus of formatted texts.

    :meth:`similarities` gives each field's cosines, :meth:`similarity` their sum weighted by
    one number per field (a model's trained weights).
    """

    def __init__(self, corpus: Sequence[str], fields: Sequence[str]) -> None:
        if not fields:
            raise ValueError("a fielded index needs at least one field")
        self.fields = tuple(fields)
        self.indexes = [LexicalIndex([field_text(t, f) for t in corpus]) for f in self.fields]

    @property
    def vocabulary_size(self) -> int:
        return sum(index.vocabulary_size for index in self.indexes)

    @property
    def bytes_per_row(self) -> float:
        return sum(index.bytes_per_row for index in self.indexes)

    def similarities(self, queries: Sequence[str]) -> list[sparse.csr_matrix]:
        """Each field's cosines ``(n_queries, n_corpus)``, in field order."""
        return [index.similarity([field_text(q, f) for q in queries])
                for f, index in zip(self.fields, self.indexes, strict=True)]

    def similarity(self, queries: Sequence[str], weights: Sequence[float]) -> sparse.csr_matrix:
        """``Σ_f weights[f] · cos_f``, ``(n_queries, n_corpus)``, sparse."""
        weights = _per_field(weights, self.fields)
        return sum((w * s for w, s in zip(weights, self.similarities(queries), strict=True)),
                   sparse.csr_matrix((len(queries), self.indexes[0].size), dtype=np.float32)).tocsr()

    def mean_similarity(self, queries: Sequence[str], weights: Sequence[float]) -> np.ndarray:
        """Each corpus row's mean weighted score over ``queries``, ``(n_corpus,)``."""
        weights = _per_field(weights, self.fields)
        return sum(w * index.mean_similarity([field_text(q, f) for q in queries])
                   for w, f, index in zip(weights, self.fields, self.indexes, strict=True))


def _per_field(weights: Sequence[float], fields: Sequence[str]) -> list[float]:
    weights = [float(w) for w in np.atleast_1d(np.asarray(weights, dtype=np.float64))]
    if len(weights) != len(fields):
        raise ValueError(f"{len(weights)} lexical weights for {len(fields)} fields ({', '.join(fields)})")
    return weights


def fielded_similarity(queries: Sequence[str], corpus: Sequence[str], fields: Sequence[str]) -> np.ndarray:
    """Dense per-field cosines ``(n_fields, n_queries, n_corpus)``, each with its field's IDF of ``corpus``."""
    return np.stack([s.toarray() for s in FieldedIndex(corpus, fields).similarities(queries)])
