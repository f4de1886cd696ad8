import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from airrep.config import TrainConfig
from airrep.metrics import lds
from airrep.model import AirRep, AirRepConfig, AirRepModel, TokenizedTexts, resolve_encoder
from airrep.train import TrainingSplit, ranking_step, train_airrep


def tiny_airrep(seed=0):
    torch.manual_seed(seed)
    encoder = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = AirRepModel(AirRepConfig(encoder=encoder.to_dict(), max_tokens=32))
    return AirRep(model, AutoTokenizer.from_pretrained(resolve_encoder("minilm")), precision="fp32")


def test_two_pass_gradient_equals_single_pass():
    airrep = tiny_airrep()
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "north"]
    dev = TokenizedTexts(airrep.tokenizer, [" ".join(rng.choice(words, 5)) for _ in range(6)], 32)
    pool_texts = [" ".join(rng.choice(words, int(rng.integers(2, 9)))) for _ in range(20)]
    pool = TokenizedTexts(airrep.tokenizer, pool_texts, 32)
    members = np.array([rng.choice(20, 5, replace=False) for _ in range(4)])
    target = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32)
    config = TrainConfig(precision="fp32", encode_chunk=3)
    grads = []
    for two_pass in (True, False):
        airrep.model.zero_grad()
        loss, _ = ranking_step(airrep.model, dev, np.arange(6), pool, members, target, config, two_pass)
        grads.append([p.grad.clone() for p in airrep.model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def planted_task(rng, n_pool=48, n_test=16, n_subsets=24, size=8):
    """Influence planted through an arbitrary code mapping that no text similarity reveals:
    pool items tagged `apple` help test items tagged `north`, and so on."""
    pool_codes, test_codes = ["apple", "river", "stone", "cloud"], ["north", "south", "east", "west"]
    filler = ["table", "green", "music", "paper", "light", "sugar", "horse", "glass"]
    pool_tag = rng.integers(4, size=n_pool)
    test_tag = rng.integers(4, size=n_test)
    pool = [f"{pool_codes[t]} " + " ".join(rng.choice(filler, 4)) for t in pool_tag]
    test = [f"{test_codes[t]} " + " ".join(rng.choice(filler, 4)) for t in test_tag]
    subsets = np.array([rng.choice(n_pool, size, replace=False) for _ in range(n_subsets)])
    # loss drop of test item i on subset s = how many members carry its mapped code
    helped = (pool_tag[subsets][:, :, None] == test_tag[None, None, :]).sum(1)  # (n_subsets, n_test)
    losses = -helped + rng.normal(scale=0.1, size=helped.shape)
    return pool, test, subsets, losses


def held_out_lds(airrep, pool, test, subsets, losses):
    scores = AirRep.score_groups(airrep.encode(test), airrep.encode(pool), subsets)
    return lds(scores, losses.T)


def test_training_learns_planted_group_influence():
    rng = np.random.default_rng(0)
    splits = []
    for _ in range(2):
        pool, test, subsets, losses = planted_task(rng)
        from airrep.labels import normalize
        splits.append(TrainingSplit(test, pool, subsets, normalize(losses)))
    eval_pool, eval_test, eval_subsets, eval_losses = planted_task(rng)
    airrep = tiny_airrep()
    before = held_out_lds(airrep, eval_pool, eval_test, eval_subsets, eval_losses)
    config = TrainConfig(steps=300, lr=3e-3, warmup_steps=5, reference_size=16, topk=12,
                         precision="fp32", encode_chunk=64, eval_every=1000)
    trained, curve = train_airrep(splits, config, airrep=airrep, show_progress_bar=False)
    after = held_out_lds(trained, eval_pool, eval_test, eval_subsets, eval_losses)
    assert np.mean(curve.loss[-20:]) < np.mean(curve.loss[:20])
    assert after > before + 0.3, (before, after)
    assert after > 0.35, (before, after)


def test_training_checkpoints_and_final_model(tmp_path):
    rng = np.random.default_rng(1)
    pool, test, subsets, losses = planted_task(rng)
    from airrep.labels import normalize
    split = TrainingSplit(test, pool, subsets, normalize(losses))
    config = TrainConfig(steps=4, lr=1e-3, warmup_steps=0, reference_size=4, topk=4, precision="fp32",
                         checkpoint_every=2, eval_every=2)
    seen = []
    _, curve = train_airrep([split], config, out_dir=tmp_path, airrep=tiny_airrep(),
                            evaluate=lambda m: seen.append(1) or 0.0, show_progress_bar=False)
    assert (tmp_path / "checkpoint-2" / "model.safetensors").exists()
    assert (tmp_path / "model.safetensors").exists()
    assert curve.eval_step == [2, 4] and len(seen) == 2
    assert len(curve.loss) == 4 and all(np.isfinite(curve.loss))


def test_no_splits_is_a_clear_error():
    with pytest.raises(ValueError, match="label generation"):
        train_airrep([], TrainConfig())
