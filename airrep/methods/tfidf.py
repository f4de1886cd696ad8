"""TF-IDF: the cosine of the test and pool texts' TF-IDF vectors (airrep/lexical.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from airrep.methods import Method, MethodContext


def tfidf_scores(test: Sequence, pool: Sequence) -> tuple[np.ndarray, int]:
    """Cosines ``(n_test, n_pool)`` with the IDF of the pool, and the vocabulary's size."""
    from airrep.data import format_record
    from airrep.lexical import LexicalIndex

    index = LexicalIndex([format_record(r) for r in pool])
    return index.similarity([format_record(r) for r in test]).toarray(), index.vocabulary_size


def _tfidf(context: MethodContext):
    return tfidf_scores


METHODS = [Method("tfidf", _tfidf, summary="TF-IDF cosine, scikit-learn, IDF of the pool")]
