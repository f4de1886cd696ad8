"""airrep.pretrain: packing text into blocks, and a pretraining run that resumes after a crash."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from airrep import pretrain
from airrep.pretrain import pack_texts, pretrain_lm


def test_pack_texts_joins_every_text_between_markers(tiny_random_lm):
    tokenizer = tiny_random_lm.tokenizer
    texts = ["the first text", "a second one, longer than the first", "third"]
    blocks = pack_texts(tokenizer, texts, block_size=5)
    stream = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    assert blocks.shape == (len(stream) // 5, 5)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]


def _model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=32, max_position_embeddings=8,
                                        tie_word_embeddings=True))


def test_pretraining_lowers_the_loss_of_a_repeating_pattern():
    blocks = torch.arange(8).repeat(32, 1) % 5 + 3  # every block is "3 4 5 6 7 3 4 5"
    model = _model()
    first = pretrain_lm(model, blocks[:4], epochs=1, lr=1e-9, batch_size=4, warmup_steps=0, precision="fp32",
                        show_progress_bar=False).final_loss
    stats = pretrain_lm(model, blocks, epochs=6, lr=3e-2, batch_size=4, warmup_steps=2, precision="fp32",
                        show_progress_bar=False)
    assert stats.final_loss < first / 3 and stats.steps == 48 and stats.tokens == 48 * 4 * 8


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path, monkeypatch):
    blocks = torch.randint(3, 50, (24, 8), generator=torch.Generator().manual_seed(0))
    settings = dict(epochs=2, lr=1e-2, batch_size=4, warmup_steps=2, precision="fp32", seed=0,
                    show_progress_bar=False)
    reference = _model()
    pretrain_lm(reference, blocks, **settings)

    crashed = _model()
    original_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def crash_at_step_8(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("crash")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        pretrain_lm(crashed, blocks, checkpoint_dir=tmp_path, checkpoint_every=5, **settings)
    monkeypatch.setattr(torch.optim.AdamW, "step", original_step)
    assert (tmp_path / "checkpoint.safetensors").exists()
    resumed = _model(seed=1)  # a fresh process: other initial weights, overwritten by the checkpoint
    stats = pretrain_lm(resumed, blocks, checkpoint_dir=tmp_path, checkpoint_every=5, **settings)
    assert stats.steps == 12 - 5
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert np.isfinite(stats.final_loss)


def test_resume_ignores_a_missing_checkpoint(tmp_path):
    assert pretrain._resume(_model(), None, None, tmp_path) == 0
