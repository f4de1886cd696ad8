import copy
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from transformers import LlamaForCausalLM, PreTrainedModel

from airrep import finetune, llm
from airrep.config import BaseLLMConfig
from airrep.finetune import make_accelerator, per_example_loss, tokenize_records
from airrep.llm import BaseLLMError, build_tiny_lm, fingerprint, load_base_llm


def test_fingerprint_is_stable_and_follows_the_weights(tiny_random_lm, tmp_path):
    model = tiny_random_lm.model
    target = tmp_path / "lm"
    model.save_pretrained(target, safe_serialization=True)
    first = fingerprint(str(target))
    assert first.startswith("sha256:")
    assert fingerprint(str(target)) == first
    # The fixture's own directory holds the same weights and config: same identity.
    assert fingerprint(str(tiny_random_lm.path)) == first

    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight[3, 5] += 1e-3
    changed.save_pretrained(target, safe_serialization=True)
    assert fingerprint(str(target)) != first

    model.save_pretrained(target, safe_serialization=True)  # back to the original weights
    assert fingerprint(str(target)) == first


def test_fingerprint_ignores_files_that_are_not_weights_or_config(tiny_random_lm, tmp_path):
    target = tmp_path / "lm"
    shutil.copytree(tiny_random_lm.path, target)
    before = fingerprint(str(target))
    (target / "README.md").write_text("notes")
    assert fingerprint(str(target)) == before
    config = json.loads((target / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5 if config["rms_norm_eps"] != 1e-5 else 1e-6
    (target / "config.json").write_text(json.dumps(config))
    assert fingerprint(str(target)) != before


def test_fingerprint_of_a_directory_without_weights(tmp_path):
    with pytest.raises(BaseLLMError, match="no weights"):
        fingerprint(str(tmp_path))


def test_fingerprint_of_a_pinned_hub_revision_needs_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(HfApi, "model_info", no_network)
    revision = "0123456789abcdef0123456789abcdef01234567"
    assert fingerprint("some/hub-id", revision=revision) == f"hub:some/hub-id@{revision}"


def test_fingerprint_of_an_unpinned_hub_id_offline_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(HfApi, "model_info", offline)
    with pytest.raises(BaseLLMError, match="Pin base_llm.revision"):
        fingerprint("some/hub-id")


@pytest.mark.parametrize("with_config", [False, True], ids=["bin-only", "bin-and-config"])
def test_pickled_checkpoints_are_refused(tiny_random_lm, tmp_path, monkeypatch, with_config):
    torch.save(tiny_random_lm.model.state_dict(), tmp_path / "pytorch_model.bin")
    if with_config:
        tiny_random_lm.model.config.save_pretrained(tmp_path)
        tiny_random_lm.tokenizer.save_pretrained(tmp_path)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on a pickled checkpoint")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(BaseLLMError, match="safetensors"):
        load_base_llm(str(tmp_path), BaseLLMConfig())


def test_load_base_llm_round_trips_the_saved_model(tiny_random_lm):
    model, tokenizer = load_base_llm(str(tiny_random_lm.path), BaseLLMConfig())
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token_id == tiny_random_lm.tokenizer.pad_token_id
    original = tiny_random_lm.model.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, original[name]), name
    ids = torch.tensor([tokenizer("### Instruction:\nhello")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, tiny_random_lm.model(input_ids=ids).logits)


def test_loads_from_many_threads_leave_later_models_tied(tiny_random_lm):
    """transformers patches ``PreTrainedModel.tie_weights`` process-wide while it loads; loads
    racing on a fan-out's threads must not leave it patched (a later tied model would keep an
    untied ``lm_head`` on the meta device). Also checks every concurrent load came out whole."""
    original_tie_weights = PreTrainedModel.tie_weights

    def load(_: int) -> bool:
        model, _ = load_base_llm(str(tiny_random_lm.path), BaseLLMConfig())
        head, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
        return head is embeddings and not head.is_meta

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(load, range(24)))
    assert PreTrainedModel.tie_weights is original_tie_weights
    fresh = LlamaForCausalLM(tiny_random_lm.model.config)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight


def test_remote_code_is_off_by_default():
    assert BaseLLMConfig().trust_remote_code is False


def test_build_tiny_lm_refuses_an_empty_slice(tiny_lm_settings):
    with pytest.raises(BaseLLMError, match="pretrain_size"):
        build_tiny_lm([], tiny_lm_settings.config, max_length=tiny_lm_settings.max_length)


def test_build_tiny_lm_is_cached_by_content(pretrained_tiny_lm, pretrain_records, tiny_lm_settings,
                                            monkeypatch):
    path = pretrained_tiny_lm
    config, max_length = tiny_lm_settings.config, tiny_lm_settings.max_length
    assert (path / "config.json").exists()
    assert any(p.suffix == ".safetensors" for p in path.iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tiny LM was trained again")

    monkeypatch.setattr(finetune, "train_lm", no_training)
    monkeypatch.setattr(llm, "train_tokenizer", no_training)
    again = build_tiny_lm(pretrain_records, config, max_length=max_length)
    assert again == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == mtimes
    # Another slice, or other settings, is another model.
    key = path.name.removeprefix("tiny-")
    assert llm.tiny_lm_key(pretrain_records, config, max_length) == key
    other_config = BaseLLMConfig(tiny=config.tiny.model_copy(update={"epochs": 3}))
    assert llm.tiny_lm_key(pretrain_records, other_config, max_length) != key
    assert llm.tiny_lm_key(pretrain_records[1:], config, max_length) != key
    assert llm.tiny_lm_key(pretrain_records, config, max_length + 1) != key


def test_pretrained_tiny_lm_loads_and_matches_its_config(pretrained_tiny_lm, tiny_lm_settings):
    tiny = tiny_lm_settings.config.tiny
    model, tokenizer = load_base_llm(str(pretrained_tiny_lm), BaseLLMConfig())
    assert model.config.hidden_size == tiny.hidden_size
    assert model.config.num_hidden_layers == tiny.num_layers
    assert model.config.max_position_embeddings == tiny_lm_settings.max_length
    assert len(tokenizer) <= tiny.vocab_size
    assert model.config.tie_word_embeddings


def test_pretraining_lowers_held_out_loss(pretrained_tiny_lm, heldout_records):
    """The pretrained tiny LM predicts unseen ShareGPT text far better than its random init."""
    model, tokenizer = load_base_llm(str(pretrained_tiny_lm), BaseLLMConfig())
    torch.manual_seed(0)
    untrained = LlamaForCausalLM(model.config)
    examples = tokenize_records(tokenizer, heldout_records[:32], model.config.max_position_embeddings)
    accelerator = make_accelerator("fp32")
    trained_loss = per_example_loss(model, examples, tokenizer.pad_token_id, 16, accelerator)
    untrained_loss = per_example_loss(untrained, examples, tokenizer.pad_token_id, 16, accelerator)
    assert untrained_loss.mean() > 0.9 * np.log(len(tokenizer))  # ~uniform before training
    assert trained_loss.mean() < untrained_loss.mean() - 1.0
    assert np.all(trained_loss < untrained_loss)


def test_new_tiny_lm_fields_at_their_defaults_keep_the_cache_key(pretrain_records, tiny_lm_settings):
    """An LM cached before ``architecture`` and ``max_pretrain_tokens`` existed keeps its key:
    the key of the default settings equals the hash of the settings as they were then."""
    import hashlib

    config, max_length = tiny_lm_settings.config, tiny_lm_settings.max_length
    before = config.tiny.model_dump(exclude={"architecture", "max_pretrain_tokens"})
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode() + str(max_length).encode())
    for record in pretrain_records:
        digest.update(llm.format_record(record).encode())
    key = llm.tiny_lm_key(pretrain_records, config, max_length)
    assert key == digest.hexdigest()[:16]
    for change in ({"architecture": "gpt2"}, {"max_pretrain_tokens": 10_000}):
        other = BaseLLMConfig(tiny=config.tiny.model_copy(update=change))
        assert llm.tiny_lm_key(pretrain_records, other, max_length) != key, change


def test_gpt2_tiny_lm_is_built_capped_and_fine_tunes(pretrain_records, heldout_records, tiny_lm_settings):
    """``architecture: gpt2`` pretrains a GPT-2 LM on at most ``max_pretrain_tokens`` tokens,
    which loads like any base LLM and whose pretraining lowers its held-out loss."""
    from transformers import GPT2LMHeadModel

    max_length = tiny_lm_settings.max_length
    tiny = tiny_lm_settings.config.tiny.model_copy(update={
        "architecture": "gpt2", "num_layers": 3, "max_pretrain_tokens": 200 * max_length})
    path = build_tiny_lm(pretrain_records, BaseLLMConfig(tiny=tiny), max_length=max_length)
    pretraining = json.loads((path / "pretraining.json").read_text())
    assert pretraining["architecture"] == "gpt2" and pretraining["tokens"] == 200 * max_length
    model, tokenizer = load_base_llm(str(path), BaseLLMConfig())
    assert isinstance(model, GPT2LMHeadModel) and model.config.n_layer == 3
    assert model.config.n_positions == max_length and model.config.tie_word_embeddings
    torch.manual_seed(0)
    untrained = GPT2LMHeadModel(model.config)
    examples = tokenize_records(tokenizer, heldout_records[:32], max_length)
    accelerator = make_accelerator("fp32")
    trained_loss = per_example_loss(model, examples, tokenizer.pad_token_id, 16, accelerator)
    untrained_loss = per_example_loss(untrained, examples, tokenizer.pad_token_id, 16, accelerator)
    assert np.isfinite(trained_loss).all()
    assert trained_loss.mean() < untrained_loss.mean() - 0.5
