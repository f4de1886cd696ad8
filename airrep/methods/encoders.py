"""Text-encoder methods: the trained AirRep, each term of its score alone, and the stock encoder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from airrep.methods import Method, MethodContext, Stored


def embedding_scores(model, test: Sequence, pool: Sequence, lexical: bool = True) -> tuple[np.ndarray, Stored]:
    """AirRep's pair scores (:meth:`AirRep.similarity`) and what it keeps per pool example:
    the fp32 embedding, plus the sparse TF-IDF rows of its lexical fields for a model with the
    lexical channel (counted as the TF-IDF row counts it). ``lexical=False``: the dense part alone."""
    from airrep.methods.tfidf import lexical_stored

    if not (lexical and model.lexical_fields is not None):
        return model.similarity(list(test), list(pool), lexical=False), Stored.dense(model.dim)
    index = model.lexical_index(list(pool))  # fitted once: the scores and the storage
    return (model.similarity(list(test), list(pool), index=index),
            Stored.dense(model.dim) + lexical_stored(index))


def _airrep(context: MethodContext):
    trained = context.trained
    return None if trained is None else (lambda t, p: embedding_scores(trained, t, p))


def _airrep_dense(context: MethodContext):
    trained = context.trained
    if trained is None or trained.lexical_fields is None:
        return None
    return lambda t, p: embedding_scores(trained, t, p, lexical=False)


def _airrep_lexical(context: MethodContext):
    from airrep.methods.tfidf import lexical_stored

    trained = context.trained
    if trained is None or trained.lexical_fields is None:
        return None

    def score(test, pool):
        index = trained.lexical_index(list(pool))
        return trained.lexical_scores(list(test), index).toarray(), lexical_stored(index)
    return score


def _encoder(context: MethodContext):
    from airrep.model import AirRep

    train = context.config.train
    untrained = AirRep.from_encoder(train.encoder, precision=train.precision)
    untrained.model.config.max_tokens = train.max_tokens
    return lambda t, p: embedding_scores(untrained, t, p)


METHODS = [
    Method("airrep", _airrep, summary="the trained AirRep"),
    Method("airrep-dense", _airrep_dense, summary="the trained AirRep's embedding term alone"),
    Method("airrep-lexical", _airrep_lexical, summary="the trained AirRep's weighted TF-IDF terms alone"),
    Method("encoder", _encoder, summary="the stock pretrained encoder, untrained"),
]
