"""The dattri gradient baselines on a tiny random Llama: shapes, the loss they read, and
that a train example identical to a test example is the one they rank first."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from transformers import LlamaConfig, LlamaForCausalLM

from airrep.data import Record, format_record
from airrep.finetune import collate, make_accelerator, per_example_loss, token_losses, tokenize_records
from airrep.llm import train_tokenizer

pytest.importorskip("dattri")
from airrep.baselines import gradient  # noqa: E402
from airrep.baselines.gradient import METHODS, gradient_scores, proj_dim_for, response_losses  # noqa: E402

WORDS = ("alpha beta gamma delta river stone cloud north south east west fire water earth wind "
         "sun moon star tree leaf bird fish road hill").split()
# test record -> the train record it is an exact copy of
DUPLICATES = {0: 3, 1: 8}


def random_record(rng: np.random.Generator, index: int) -> Record:
    return Record(id=f"r{index}", group_id=f"r{index}", prompt=" ".join(rng.choice(WORDS, 6)),
                  response=" ".join(rng.choice(WORDS, int(rng.integers(4, 14)))))


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(0)
    records = [random_record(rng, i) for i in range(100)]
    tokenizer = train_tokenizer([format_record(r) for r in records], 400)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=160,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    train = records[:12]
    test = [train[DUPLICATES[0]], train[DUPLICATES[1]], records[50], records[51]]
    return model, tokenizer, train, test


def test_response_losses_match_the_finetune_loss(setting):
    """No attention mask on right-padded batches gives each example's own loss."""
    model, tokenizer, train, _ = setting
    examples = tokenize_records(tokenizer, train, 160)
    batch = collate(examples, tokenizer.pad_token_id)
    assert len({len(e.input_ids) for e in examples}) > 1  # the batch really is padded
    with torch.no_grad():
        ours = response_losses(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    reference = per_example_loss(model, examples, tokenizer.pad_token_id, 5, make_accelerator("fp32"))
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_scores_rank_the_duplicate_first(setting, method, tmp_path, monkeypatch):
    model, tokenizer, train, test = setting
    monkeypatch.chdir(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = gradient_scores(method, model, tokenizer, train, test,
                             proj_dim=256 if method == "logra" else None, batch_size=5)
    assert result.method == method
    assert result.scores.shape == (len(test), len(train))
    assert np.isfinite(result.scores).all()
    assert result.dim > 0 and result.seconds > 0
    for test_index, train_index in DUPLICATES.items():
        row = result.scores[test_index]
        assert np.argmax(row) == train_index, (method, np.round(row, 3))
        assert row[train_index] > 0  # training on the same example lowers its loss
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.grad is not None for p in model.parameters())
    assert list(tmp_path.iterdir()) == []  # nothing left in the working directory


def test_tracin_is_a_projected_gradient_dot_product(setting):
    """TracIn against exact per-example gradients from a loop over unpadded examples.

    A Gaussian projection to k dimensions estimates a . b with standard deviation
    sqrt((|a|^2 |b|^2 + (a . b)^2) / k); every score must lie within 5 of them.
    """
    model, tokenizer, train, test = setting
    proj_dim = 2048
    result = gradient_scores("tracin", model, tokenizer, train, test, proj_dim=proj_dim, batch_size=5)

    def flat_gradient(record):
        batch = collate(tokenize_records(tokenizer, [record], 160), tokenizer.pad_token_id)
        losses, _ = token_losses(model, batch)
        grads = torch.autograd.grad(losses.mean(), list(model.parameters()))
        return torch.cat([g.flatten() for g in grads]).double()

    train_grads = torch.stack([flat_gradient(r) for r in train])
    test_grads = torch.stack([flat_gradient(r) for r in test])
    exact = (test_grads @ train_grads.T).numpy()
    norms = np.outer(test_grads.norm(dim=1).numpy(), train_grads.norm(dim=1).numpy())
    tolerance = 5 * np.sqrt((norms**2 + exact**2) / proj_dim)
    assert np.all(np.abs(result.scores - exact) <= tolerance)
    assert np.corrcoef(result.scores.ravel(), exact.ravel())[0, 1] > 0.95


def test_unknown_method_is_refused(setting):
    model, tokenizer, train, test = setting
    with pytest.raises(ValueError, match="unknown gradient baseline"):
        gradient_scores("grad-cos", model, tokenizer, train, test)


@pytest.mark.parametrize("method", METHODS)
def test_scores_follow_the_loss_reduction_of_a_step_on_the_train_example(setting, method):
    """Sign and meaning: one small SGD step on train example j lowers the loss of test
    example i by about lr * g_i . g_j, so higher scores must go with larger reductions."""
    model, tokenizer, train, test = setting
    accelerator = make_accelerator("fp32")
    test_examples = tokenize_records(tokenizer, test, 160)
    base_losses = per_example_loss(model, test_examples, tokenizer.pad_token_id, 8, accelerator)
    reductions = np.zeros((len(test), len(train)))
    for j, record in enumerate(train):
        stepped = copy.deepcopy(model)
        losses, _ = token_losses(stepped, collate(tokenize_records(tokenizer, [record], 160), tokenizer.pad_token_id))
        losses.mean().backward()
        with torch.no_grad():
            for parameter in stepped.parameters():
                parameter -= 1e-2 * parameter.grad
        reductions[:, j] = base_losses - per_example_loss(
            stepped, test_examples, tokenizer.pad_token_id, 8, accelerator
        )
    result = gradient_scores(method, model, tokenizer, train, test,
                             proj_dim=256 if method == "logra" else None, batch_size=5)
    correlations = [spearmanr(result.scores[i], reductions[i])[0] for i in range(len(test))]
    assert np.mean(correlations) > 0.3, np.round(correlations, 2)


@pytest.mark.parametrize("method", METHODS)
def test_batching_does_not_change_the_scores(setting, method, monkeypatch):
    """Several length-sorted batches give the scores of one batch (the rows come back in
    input order, and each example's gradient does not depend on its batch-mates)."""
    model, tokenizer, train, test = setting
    proj_dim = 256 if method == "logra" else None
    whole = gradient_scores(method, model, tokenizer, train, test, proj_dim=proj_dim, batch_size=len(train))
    monkeypatch.setattr(gradient, "PER_SAMPLE_GRADIENT_BUDGET", 1)
    batched = gradient_scores(method, model, tokenizer, train, test, proj_dim=proj_dim, batch_size=3)
    scale = np.abs(whole.scores).max()
    # TRAK solves with its damped kernel (X^T X + lambda I)^-1, which scales fp32 round-off
    # in the gradients by the kernel's condition number; a misplaced row would still be off
    # by the whole score.
    tolerance = 1e-3 if method == "trak" else 1e-4
    np.testing.assert_allclose(batched.scores, whole.scores, rtol=tolerance, atol=tolerance * scale)


def test_gradient_features_preserve_gradient_geometry(setting):
    """The projected features' dot products track the exact per-example gradient dot
    products (a random projection keeps them in expectation), and a duplicate's feature
    vector is the nearest one to its original's."""
    model, tokenizer, train, test = setting
    features = gradient.gradient_features(model, tokenizer, train, proj_dim=2048, batch_size=5, seed=1)
    assert features.shape == (len(train), 2048) and np.isfinite(features).all()
    exact = []
    for record in train:
        lm = copy.deepcopy(model).float()
        batch = collate(tokenize_records(tokenizer, [record], 160), tokenizer.pad_token_id)
        response_losses(lm(input_ids=batch["input_ids"]).logits, batch["labels"]).sum().backward()
        exact.append(torch.cat([p.grad.flatten() for p in lm.parameters()]).numpy())
    exact = np.stack(exact)
    exact_gram, projected_gram = exact @ exact.T, features @ features.T
    upper = np.triu_indices(len(train))
    assert spearmanr(exact_gram[upper], projected_gram[upper]).statistic > 0.9
    again = gradient.gradient_features(model, tokenizer, [test[0], *train], proj_dim=2048, batch_size=5, seed=1)
    np.testing.assert_allclose(again[1:], features, rtol=1e-4, atol=1e-5)  # same seed, same map
    assert np.argmax(features @ again[0]) == DUPLICATES[0]


def test_a_storage_budget_keeps_each_method_within_it(setting):
    """LoGra's per-layer square times its linear layers (7 in the block, 1 head) stays within
    the budget and is the largest square that does; the others project to the budget itself."""
    model, tokenizer, train, test = setting
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert n_linear == 8
    assert proj_dim_for("logra", model, 384) == 36 and proj_dim_for("logra", model, 7) == 1
    assert proj_dim_for("trak", model, 384) == 384 and proj_dim_for("tracin", model, 50) == 50
    result = gradient_scores("logra", model, tokenizer, train, test, proj_dim=proj_dim_for("logra", model, 200))
    assert result.dim == 8 * 25 <= 200
    with pytest.raises(ValueError, match="at least 1"):
        proj_dim_for("logra", model, 0)


def test_logra_reads_every_layer_of_a_gpt2(setting, tmp_path, monkeypatch):
    """GPT-2's Conv1D layers become equal nn.Linear layers in LoGra's copy: the same logits,
    one projection per layer (4 per block and the head), and the duplicate still ranked first."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer, train, test = setting
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                       n_positions=160, bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id)).eval()
    ids = torch.tensor([tokenizer(format_record(test[2]))["input_ids"]])
    converted = gradient.conv1d_as_linear(copy.deepcopy(model))
    linear = [m for m in converted.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 2 * 4 + 1
    torch.testing.assert_close(converted(input_ids=ids).logits, model(input_ids=ids).logits)
    assert proj_dim_for("logra", model, 9 * 16) == 16
    monkeypatch.chdir(tmp_path)
    result = gradient_scores("logra", model, tokenizer, train, test, proj_dim=16, batch_size=5)
    assert result.dim == 9 * 16
    for test_index, train_index in DUPLICATES.items():
        assert np.argmax(result.scores[test_index]) == train_index
