"""TF-IDF: the cosine of the test and pool texts' TF-IDF vectors (airrep/lexical.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from airrep.methods import Method, MethodContext, Stored


def lexical_stored(index) -> Stored:
    """A TF-IDF row: counted as the paper counts it (the vocabulary, dense), stored sparse."""
    return Stored(index.vocabulary_size, index.bytes_per_row)


def tfidf_scores(test: Sequence, pool: Sequence) -> tuple[np.ndarray, Stored]:
    """Cosines ``(n_test, n_pool)`` with the IDF of the pool, and what a pool row keeps."""
    from airrep.data import format_record
    from airrep.lexical import LexicalIndex

    index = LexicalIndex([format_record(r) for r in pool])
    return index.similarity([format_record(r) for r in test]).toarray(), lexical_stored(index)


def _tfidf(context: MethodContext):
    return tfidf_scores


METHODS = [Method("tfidf", _tfidf, summary="TF-IDF cosine, scikit-learn, IDF of the pool")]
