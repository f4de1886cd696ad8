import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from airrep.config import ConfigError, load_config
from airrep.data import Record
from airrep.methods import Stored, build_methods, registry, row_name, row_names
from airrep.model import AirRep, AirRepConfig, AirRepModel, resolve_encoder


def test_every_method_is_registered_once_with_its_rows():
    methods = registry()
    assert {"airrep", "airrep-dense", "airrep-lexical", "encoder", "tfidf", "logra", "tracin", "trak"} <= set(methods)
    names = row_names()
    assert "airrep-sum" in names and "logra" in names and "logra-sum" in names
    assert "logra" not in [r for m in methods.values() for r in m.rows()]  # only its sum row exists


def test_a_misspelt_method_is_an_error_that_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown attribution method\(s\) \['tfidff'\].*valid: .*tfidf"):
        load_config("configs/tiny.yaml", ["evaluate.methods=[airrep,tfidff]"], environ={})


def _lexical_airrep(weight):
    torch.manual_seed(0)
    encoder = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=30522)
    model = AirRep(AirRepModel(AirRepConfig(encoder=encoder.to_dict(), max_tokens=32, lexical=weight is not None)),
                   AutoTokenizer.from_pretrained(resolve_encoder("minilm")), precision="fp32")
    if weight is not None:
        with torch.no_grad():
            model.model.lexical_weight.fill_(weight)
    return model


def test_methods_come_in_the_configs_order_and_the_terms_add_up():
    config = load_config("configs/tiny.yaml", ["evaluate.methods=[tfidf,airrep-lexical,airrep,airrep-dense-sum]"],
                         environ={})
    methods = build_methods(config, _lexical_airrep(3.0))
    assert list(methods) == ["tfidf", "airrep-lexical", "airrep", "airrep-dense"]
    assert methods["airrep-dense"][1] == ("sum",) and methods["airrep"][1] == ("attention",)
    test = [Record("p", "p", "the cat sat", "yes"), Record("q", "q", "stock prices fell", "no")]
    pool = [Record("a", "a", "a cat on a mat", "ok"), Record("b", "b", "prices rose", "up"),
            Record("c", "c", "nothing shared", "here")]
    scores = {name: fn(test, pool) for name, (fn, _) in methods.items()}
    np.testing.assert_allclose(scores["airrep-lexical"][0], 3.0 * scores["tfidf"][0], rtol=1e-6)
    np.testing.assert_allclose(scores["airrep"][0], scores["airrep-dense"][0] + scores["airrep-lexical"][0],
                               rtol=1e-5, atol=1e-6)
    assert scores["airrep-dense"][1] == Stored(32, 128.0)
    assert scores["airrep"][1] == Stored.dense(32) + scores["tfidf"][1]
    # TF-IDF is counted as a dense vocabulary row, but stored sparse: far fewer bytes.
    tfidf = scores["tfidf"][1]
    assert tfidf.numbers > 5 and 0 < tfidf.bytes < 4 * tfidf.numbers * 2


def test_terms_of_a_dense_model_are_left_out():
    config = load_config("configs/tiny.yaml", ["evaluate.methods=[airrep,airrep-dense,airrep-lexical]"], environ={})
    assert list(build_methods(config, _lexical_airrep(None))) == ["airrep"]


def test_frontier_budgets_add_one_entry_per_size_after_the_methods():
    config = load_config("configs/tiny.yaml", ["evaluate.methods=[tfidf,logra]",
                                              "evaluate.frontier={logra: [384, 18432], trak: [384]}"], environ={})
    methods = build_methods(config, None, llm_path="unused-until-scored")
    assert list(methods) == ["tfidf", "logra", "logra@384", "logra@18432", "trak@384"]
    assert all(methods[name][1] == ("sum",) for name in ("logra@384", "trak@384"))
    assert row_name("logra@384", "sum") == "logra-sum@384" and row_name("airrep", "attention") == "airrep"
    # without a base LM the gradient methods, budgets included, do not apply
    assert list(build_methods(config, None, llm_path=None)) == ["tfidf"]


@pytest.mark.parametrize("frontier, message", [
    ("{tfidf: [384]}", r"\['tfidf'\] take no storage budget; methods that do: logra, tracin, trak"),
    ("{logra: [0]}", "each at least 1"),
])
def test_a_frontier_on_a_method_without_a_budget_is_an_error(frontier, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny.yaml", [f"evaluate.frontier={frontier}"], environ={})
