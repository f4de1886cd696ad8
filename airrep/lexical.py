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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse


class LexicalIndex:
    """A corpus's L2-normalised TF-IDF rows; :meth:`similarity` scores query texts against them."""

    def __init__(self, corpus: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(list(corpus)) if len(corpus) else None

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
            return sparse.csr_matrix((len(queries), 0), dtype=np.float32)
        return (self.vectorizer.transform(list(queries)) @ self.matrix.T).astype(np.float32).tocsr()

    def mean_similarity(self, queries: Sequence[str]) -> np.ndarray:
        """Each corpus row's mean cosine over ``queries``, ``(n_corpus,)``: one product with the
        queries' mean row, not the ``(n_queries, n_corpus)`` matrix of :meth:`similarity`."""
        if self.matrix is None:
            return np.zeros(0, dtype=np.float32)
        centroid = np.asarray(self.vectorizer.transform(list(queries)).mean(axis=0))  # (1, vocabulary)
        return np.asarray(self.matrix @ centroid.T, dtype=np.float32).ravel()


def lexical_similarity(queries: Sequence[str], corpus: Sequence[str]) -> np.ndarray:
    """Dense cosines ``(n_queries, n_corpus)`` with the IDF of ``corpus``."""
    return LexicalIndex(corpus).similarity(queries).toarray()
