import numpy as np
import pytest

from airrep.lexical import LexicalIndex, lexical_similarity

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "stock prices fell sharply today",
          "the cat chased the dog"]


def test_cosines_of_copies_disjoint_and_partial_overlap():
    sims = lexical_similarity(["the cat sat on the mat", "quantum chromodynamics", "cat and dog"], CORPUS)
    assert sims.shape == (3, 4)
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(sims[1], 0.0)  # no shared word, nothing
    assert sims[2, 3] > sims[2, 0] > 0 and sims[2, 2] == 0


def test_idf_comes_from_the_corpus_only():
    """A query scores the same whatever else is asked with it (the IDF never sees queries)."""
    index = LexicalIndex(CORPUS)
    together = index.similarity(["cat dog", "prices park"]).toarray()
    np.testing.assert_allclose(together[1:], index.similarity(["prices park"]).toarray())
    assert index.vocabulary_size == len({w for t in CORPUS for w in t.split() if len(w) > 1})


def test_empty_corpus_scores_nothing():
    assert lexical_similarity(["anything"], []).shape == (1, 0)
