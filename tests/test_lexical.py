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


def test_fields_score_apart_and_weigh_into_one_sum():
    from airrep.data import format_example
    from airrep.lexical import FieldedIndex, field_text

    corpus = [format_example("translate the text", "bonjour le monde"),
              format_example("summarise the text", "the cat sat on the mat"),
              format_example("translate the text", "the cat sat")]
    query = [format_example("summarise this", "bonjour monde")]
    assert field_text(corpus[0], "response") == "bonjour le monde" and field_text(corpus[0], "text") == corpus[0]
    index = FieldedIndex(corpus, ["prompt", "response"])
    prompt, response = (s.toarray() for s in index.similarities(query))
    assert prompt[0, 1] > prompt[0, 0] and response[0, 0] > response[0, 1] == 0
    np.testing.assert_allclose(index.similarity(query, [2.0, 0.5]).toarray(), 2.0 * prompt + 0.5 * response,
                               rtol=1e-6)
    many = [query[0], format_example("translate", "le chat")]
    np.testing.assert_allclose(index.mean_similarity(many, [2.0, 0.5]),
                               index.similarity(many, [2.0, 0.5]).toarray().mean(axis=0), rtol=1e-5, atol=1e-7)
    assert index.bytes_per_row == pytest.approx(sum(i.bytes_per_row for i in index.indexes))
    with pytest.raises(ValueError, match="2 fields"):
        index.similarity(query, [1.0])
    with pytest.raises(ValueError, match="unknown lexical field"):
        FieldedIndex(corpus, ["title"])


def test_a_field_no_text_has_scores_zero_with_the_corpus_shape():
    """Plain texts without the response marker have an empty prompt field: it scores 0, not an error."""
    from airrep.lexical import FieldedIndex

    index = FieldedIndex(CORPUS, ["prompt", "response"])
    prompt, response = (s.toarray() for s in index.similarities(["the cat"]))
    assert prompt.shape == response.shape == (1, len(CORPUS))
    np.testing.assert_array_equal(prompt, 0.0)
    assert response[0, 0] > 0
