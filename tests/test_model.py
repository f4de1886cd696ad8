import numpy as np
import pytest
import torch
from scipy import sparse
from transformers import AutoTokenizer, BertConfig

from airrep.model import AirRep, AirRepConfig, AirRepModel, pool_groups, pool_groups_shared, resolve_encoder


def _tiny_airrep(layers: int) -> AirRep:
    torch.manual_seed(0)
    encoder = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                         vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = AirRepModel(AirRepConfig(encoder=encoder.to_dict(), max_tokens=64))
    return AirRep(model, AutoTokenizer.from_pretrained(resolve_encoder("minilm")), precision="fp32")


@pytest.fixture(scope="module")
def tiny_airrep():
    return _tiny_airrep(layers=2)


TEXTS = ["short", "a somewhat longer text with more words in it", "mid length text here",
         "x " * 40, "another one", "the quick brown fox jumps over the lazy dog"]


def test_projection_starts_at_identity(tiny_airrep):
    w = tiny_airrep.model.projection.weight
    assert torch.equal(w, torch.eye(w.shape[0]))


def test_encode_preserves_input_order_under_length_sorting(tiny_airrep):
    together = tiny_airrep.encode(TEXTS, batch_size=2)
    one_by_one = np.concatenate([tiny_airrep.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_save_load_round_trip_identical_embeddings(tiny_airrep, tmp_path):
    tiny_airrep.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = AirRep.from_pretrained(tmp_path, precision="fp32")
    np.testing.assert_array_equal(tiny_airrep.encode(TEXTS), loaded.encode(TEXTS))


def test_similarity_adds_the_weighted_tfidf_cosine_and_survives_save_load(tmp_path):
    from airrep.lexical import lexical_similarity

    torch.manual_seed(0)
    encoder = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=30522)
    airrep = AirRep(AirRepModel(AirRepConfig(encoder=encoder.to_dict(), max_tokens=64, lexical=True)),
                    AutoTokenizer.from_pretrained(resolve_encoder("minilm")), precision="fp32")
    assert airrep.lexical_weight == 0.0  # a fresh model scores like its encoder
    with torch.no_grad():
        airrep.model.lexical_weight.fill_(2.5)
    dense = airrep.encode(TEXTS[:3]) @ airrep.encode(TEXTS).T
    np.testing.assert_allclose(airrep.similarity(TEXTS[:3], TEXTS, lexical=False), dense, rtol=1e-6)
    np.testing.assert_allclose(airrep.similarity(TEXTS[:3], TEXTS),
                               dense + 2.5 * lexical_similarity(TEXTS[:3], TEXTS), rtol=1e-5, atol=1e-6)
    airrep.save_pretrained(tmp_path)
    loaded = AirRep.from_pretrained(tmp_path, precision="fp32")
    assert loaded.lexical_weight == pytest.approx(2.5)
    np.testing.assert_allclose(loaded.similarity(TEXTS[:3], TEXTS), airrep.similarity(TEXTS[:3], TEXTS), rtol=1e-6)


def test_a_fielded_model_weighs_each_fields_cosine_and_keeps_its_weights_through_save_load(tmp_path):
    from airrep.data import format_example
    from airrep.lexical import FieldedIndex

    torch.manual_seed(0)
    encoder = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=30522)
    config = AirRepConfig(encoder=encoder.to_dict(), max_tokens=64, lexical=True,
                          lexical_fields=["prompt", "response"])
    airrep = AirRep(AirRepModel(config), AutoTokenizer.from_pretrained(resolve_encoder("minilm")), precision="fp32")
    texts = [format_example(f"question {i % 3}", t) for i, t in enumerate(TEXTS)]
    assert airrep.lexical_fields == ("prompt", "response")
    np.testing.assert_array_equal(airrep.lexical_weight, [0.0, 0.0])
    with torch.no_grad():
        airrep.model.lexical_weight.copy_(torch.tensor([0.5, 3.0]))
    dense = airrep.encode(texts[:3]) @ airrep.encode(texts).T
    prompt, response = (s.toarray() for s in FieldedIndex(texts, ["prompt", "response"]).similarities(texts[:3]))
    np.testing.assert_allclose(airrep.similarity(texts[:3], texts), dense + 0.5 * prompt + 3.0 * response,
                               rtol=1e-5, atol=1e-6)
    airrep.save_pretrained(tmp_path)
    loaded = AirRep.from_pretrained(tmp_path, precision="fp32")
    assert loaded.lexical_fields == ("prompt", "response")
    np.testing.assert_allclose(loaded.lexical_weight, [0.5, 3.0])
    np.testing.assert_allclose(loaded.similarity(texts[:3], texts), airrep.similarity(texts[:3], texts), rtol=1e-6)


def test_models_without_the_channel_score_by_dot_product_alone(tiny_airrep):
    assert tiny_airrep.lexical_weight is None
    np.testing.assert_allclose(tiny_airrep.similarity(TEXTS[:2], TEXTS),
                               tiny_airrep.encode(TEXTS[:2]) @ tiny_airrep.encode(TEXTS).T, rtol=1e-6)


def test_score_groups_attention_and_sum_against_loop():
    rng = np.random.default_rng(0)
    query, train = rng.normal(size=(3, 4)), rng.normal(size=(10, 4))
    groups = np.array([[0, 1, 2], [3, 4, 5], [7, 8, 9]])
    att = AirRep.score_groups(query, train, groups, "attention")
    summed = AirRep.score_groups(query, train, groups, "sum")
    for i in range(3):
        for g, members in enumerate(groups):
            s = np.array([query[i] @ train[m] for m in members])
            w = np.exp(np.abs(s)) / np.exp(np.abs(s)).sum()
            assert att[i, g] == pytest.approx((w * s).sum(), rel=1e-5)
            assert summed[i, g] == pytest.approx(s.sum(), rel=1e-5)


def test_top_k_against_argsort():
    rng = np.random.default_rng(0)
    query, corpus = rng.normal(size=(5, 8)), rng.normal(size=(50, 8))
    scores, idx = AirRep.top_k(query, corpus, k=3)
    full = query @ corpus.T
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :3])
    np.testing.assert_allclose(scores, np.take_along_axis(full, idx, 1), rtol=1e-5)
    extra = sparse.random(5, 50, density=0.2, random_state=0, format="csr") * 10
    scores, idx = AirRep.top_k(query, corpus, k=3, chunk=2, extra=extra)
    full = full + extra.toarray()
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :3])
    np.testing.assert_allclose(scores, np.take_along_axis(full, idx, 1), rtol=1e-5)


def test_bf16_encode_close_to_fp32():
    model = AirRep.from_encoder("minilm", precision="fp32")
    texts = TEXTS * 3
    fp32 = model.encode(texts)
    model.precision = "bf16"
    bf16 = model.encode(texts)
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() > 0.999


def test_bf16_copy_follows_in_place_weight_updates(tiny_airrep):
    """encode keeps a bf16 copy of the model; an optimizer-style in-place update must reach it."""
    airrep = AirRep(tiny_airrep.model, tiny_airrep.tokenizer, precision="bf16")
    before = airrep.encode(TEXTS)
    kept = airrep._runner[1]
    assert airrep._inference_module() is kept  # unchanged weights: the copy is reused
    with torch.no_grad():
        airrep.model.projection.weight.mul_(2)
    try:
        after = airrep.encode(TEXTS)
    finally:
        with torch.no_grad():
            airrep.model.projection.weight.div_(2)
    np.testing.assert_allclose(after, 2 * before, rtol=1e-2, atol=1e-3)


@pytest.mark.slow
def test_compiled_encode_matches_eager():
    """``compile=True`` (torch.compile, dynamic shapes, frozen weights) gives the eager model's
    embeddings for batches of several lengths and sizes, and still does after an in-place
    weight update: the frozen graph must not keep the old weights. One encoder layer: the
    compiled graph repeats the layer, so a second one only doubles the compile time."""
    eager = _tiny_airrep(layers=1)
    compiled = AirRep(eager.model, eager.tokenizer, precision="fp32", compile=True)
    texts = TEXTS * 2 + ["one more text of yet another length, to change the padded width"]
    for batch_size in (3, 5):
        np.testing.assert_allclose(compiled.encode(texts, batch_size=batch_size),
                                   eager.encode(texts, batch_size=batch_size), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        eager.model.projection.weight.mul_(2)
    np.testing.assert_allclose(compiled.encode(texts, batch_size=3),
                               eager.encode(texts, batch_size=3), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pooling", ["attention", "sum"])
def test_shared_pooling_equals_the_gather(dtype, pooling):
    """Same scores as ``pool_groups`` for overlapping groups, repeated members, and a row
    whose magnitudes span hundreds (where the shared shift would underflow a group)."""
    rng = np.random.default_rng(1)
    sims = torch.as_tensor(rng.normal(size=(6, 40)) * 3, dtype=dtype)
    sims[2, :20] *= 200  # group members far below the row's largest magnitude
    sims[2, 20:] /= 10
    groups = torch.as_tensor(np.stack([rng.choice(40, 8, replace=False) for _ in range(5)]
                                      + [np.array([30, 31, 32, 33, 30, 30, 34, 35])]))
    expected = pool_groups(sims, groups, pooling)
    got = pool_groups_shared(sims, groups, pooling)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_long_texts_lose_prompt_tokens_before_response_tokens():
    """Encoding truncates like the fine-tune: the response keeps all but a quarter of the budget."""
    from airrep.data import format_example
    from airrep.model import TokenizedTexts

    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("minilm"))
    prompt, response = " ".join(["question"] * 200), " ".join(["answer"] * 200)
    (ids,) = TokenizedTexts(tokenizer, [format_example(prompt, response)], 64).ids
    words = tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) == 64 and words[0] == "[CLS]" and words[-1] == "[SEP]"
    assert words.count("answer") == 62 - 62 // 4 and words.count("question") == 62 // 4 - 5  # '### instruction :'
    short = format_example("a short prompt", "and a short response")
    assert TokenizedTexts(tokenizer, [short, "no template at all"], 64).ids == \
        [tokenizer(short)["input_ids"], tokenizer("no template at all")["input_ids"]]
