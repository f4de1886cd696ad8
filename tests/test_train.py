import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from airrep.config import TrainConfig
from airrep.metrics import lds
from airrep.model import AirRep, AirRepConfig, AirRepModel, pool_groups_shared, resolve_encoder
from airrep.train import TextBank, TrainingSplit, ranking_step, train_airrep


def tiny_airrep(seed=0, layers=1, lexical_fields=None):
    torch.manual_seed(seed)
    encoder = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                         vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = AirRepModel(AirRepConfig(encoder=encoder.to_dict(), max_tokens=32, lexical=bool(lexical_fields),
                                     lexical_fields=lexical_fields))
    return AirRep(model, AutoTokenizer.from_pretrained(resolve_encoder("minilm")), precision="fp32")


def _step_inputs(airrep, rng):
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "north"]
    dev = [" ".join(rng.choice(words, 5)) for _ in range(6)]
    pool = [" ".join(rng.choice(words, int(rng.integers(2, 9)))) + f" {i}" for i in range(20)]
    bank = TextBank(airrep.tokenizer, dev + pool, 32)
    members = bank.rows(pool)[np.array([rng.choice(20, 5, replace=False) for _ in range(4)])]
    target = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32)
    return bank, bank.rows(dev), members, target


def _gradients(model, step) -> dict[str, torch.Tensor]:
    model.zero_grad()
    step()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("trainable_layers", [None, 1, 0])
def test_two_pass_gradient_equals_single_pass(trainable_layers):
    airrep = tiny_airrep(layers=2)
    airrep.model.freeze_below(trainable_layers)
    bank, dev_rows, members, target = _step_inputs(airrep, np.random.default_rng(0))
    config = TrainConfig(precision="fp32", encode_chunk=3)
    lexical = torch.rand(len(dev_rows), *members.shape)  # TF-IDF cosines of each dev example and member
    with torch.no_grad():
        airrep.model.lexical_weight.fill_(1.5)

    def step(one_pass):
        return lambda: ranking_step(airrep.model, bank, dev_rows, members, target, config, one_pass, lexical)

    one, two = _gradients(airrep.model, step(True)), _gradients(airrep.model, step(False))
    assert one.keys() == two.keys() and len(one) > 0
    assert one["lexical_weight"].abs() > 0  # the channel's weight learns from the same loss
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("trainable_layers", [2, 1, 0])
def test_frozen_layer_cache_gives_the_uncached_gradient(trainable_layers):
    """Running only the top blocks on cached states of the bottom ones is the same function."""
    airrep = tiny_airrep(layers=2)
    airrep.model.config.normalize = True
    with torch.no_grad():
        airrep.model.log_scale.fill_(0.7)
    airrep.model.freeze_below(trainable_layers)
    bank, dev_rows, members, target = _step_inputs(airrep, np.random.default_rng(1))
    config = TrainConfig(precision="fp32", encode_chunk=4)
    plain = _gradients(airrep.model, lambda: ranking_step(airrep.model, bank, dev_rows, members, target, config))
    bank.build_cache(airrep.model, 2 - trainable_layers, chunk=5, precision="fp32", dtype=torch.float32)
    cached = _gradients(airrep.model, lambda: ranking_step(airrep.model, bank, dev_rows, members, target, config))
    assert plain.keys() == cached.keys() and "projection.weight" in plain
    for name in plain:
        torch.testing.assert_close(plain[name], cached[name], atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        rows = np.arange(len(bank))
        torch.testing.assert_close(bank.encode(airrep.model, rows, 7, "fp32"),
                                   torch.as_tensor(airrep.encode([list(bank.index)[r] for r in rows])),
                                   atol=1e-5, rtol=1e-4)


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
    """LDS of the model's own pair scores (the lexical channel's term included)."""
    scores = pool_groups_shared(torch.as_tensor(airrep.similarity(test, pool), dtype=torch.float32),
                                torch.as_tensor(subsets))
    return lds(scores.numpy(), losses.T)


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


def test_training_checkpoints_validates_and_keeps_the_best(tmp_path):
    rng = np.random.default_rng(1)
    from airrep.labels import normalize
    splits = [TrainingSplit(test, pool, subsets, normalize(losses))
              for pool, test, subsets, losses in (planted_task(rng) for _ in range(2))]
    config = TrainConfig(steps=4, lr=1e-3, warmup_steps=0, reference_size=4, topk=4, precision="fp32",
                         checkpoint_every=2, eval_every=2, validation_splits=1)
    _, curve = train_airrep(splits, config, out_dir=tmp_path, airrep=tiny_airrep(), show_progress_bar=False)
    assert (tmp_path / "checkpoint-2" / "model.safetensors").exists()
    assert (tmp_path / "model.safetensors").exists()
    assert curve.eval_step == [0, 2, 4] and all(np.isfinite(curve.eval_lds))
    assert curve.best_step == curve.eval_step[int(np.argmax(curve.eval_lds))]
    assert len(curve.loss) == 4 and all(np.isfinite(curve.loss))
    kept = AirRep.from_pretrained(tmp_path, precision="fp32")
    pool, test, subsets, labels = splits[1].pool_texts, splits[1].dev_texts, splits[1].subsets, splits[1].labels
    assert held_out_lds(kept, pool, test, subsets, -labels) == pytest.approx(max(curve.eval_lds), abs=1e-6)


def test_early_stopping_after_patience_evaluations():
    rng = np.random.default_rng(2)
    from airrep.labels import normalize
    splits = [TrainingSplit(test, pool, subsets, normalize(losses))
              for pool, test, subsets, losses in (planted_task(rng) for _ in range(2))]
    config = TrainConfig(steps=50, lr=1e-12, warmup_steps=0, reference_size=4, topk=4, precision="fp32",
                         eval_every=1, validation_splits=1, patience=3)
    _, curve = train_airrep(splits, config, airrep=tiny_airrep(), show_progress_bar=False)
    assert curve.step[-1] == 3 and curve.best_step == 0  # a learning rate of 1e-12 changes nothing


def test_no_splits_is_a_clear_error():
    with pytest.raises(ValueError, match="label generation"):
        train_airrep([], TrainConfig())
    with pytest.raises(ValueError, match="validation_splits"):
        train_airrep([TrainingSplit([], [], np.zeros((2, 1)), np.zeros((2, 0)))], TrainConfig(validation_splits=1))


def test_starting_scale_is_picked_by_validation():
    rng = np.random.default_rng(3)
    from airrep.labels import normalize
    splits = [TrainingSplit(test, pool, subsets, normalize(losses))
              for pool, test, subsets, losses in (planted_task(rng) for _ in range(2))]
    config = TrainConfig(steps=1, lr=1e-12, projection_lr=1e-12, warmup_steps=0, reference_size=4, topk=4,
                         precision="fp32", eval_every=1, validation_splits=1, scale_candidates=[0.01, 1.0, 100.0],
                         lexical=False)
    airrep = tiny_airrep()
    _, curve = train_airrep(splits, config, airrep=airrep, show_progress_bar=False)
    assert curve.initial_scale in (0.01, 1.0, 100.0)
    picked = curve.eval_lds[0]
    for scale in config.scale_candidates:  # the kept model scores as the best candidate does
        with torch.no_grad():
            airrep.model.log_scale.fill_(0.5 * np.log(scale))
        pool, test, subsets, labels = splits[1].pool_texts, splits[1].dev_texts, splits[1].subsets, splits[1].labels
        assert held_out_lds(airrep, pool, test, subsets, -labels) <= picked + 1e-9


def lexical_task(rng, n_pool=48, n_test=16, n_subsets=24, size=8):
    """Influence planted through shared rare words: a pool item helps the test items that
    share its topic word, so word overlap reveals it and a random tiny encoder does not."""
    topics = ["saffron", "quasar", "lichen", "obsidian", "tundra", "zephyr"]
    filler = ["table", "green", "music", "paper", "light", "sugar", "horse", "glass"]
    pool_tag, test_tag = rng.integers(len(topics), size=n_pool), rng.integers(len(topics), size=n_test)
    pool = [" ".join(rng.choice(filler, 2)) + f" {topics[t]}" for t in pool_tag]
    test = [" ".join(rng.choice(filler, 2)) + f" {topics[t]}" for t in test_tag]
    subsets = np.array([rng.choice(n_pool, size, replace=False) for _ in range(n_subsets)])
    helped = (pool_tag[subsets][:, :, None] == test_tag[None, None, :]).sum(1)
    return pool, test, subsets, -helped + rng.normal(scale=0.1, size=helped.shape)


def test_lexical_weight_is_picked_on_validation_and_carries_word_overlap():
    from airrep.labels import normalize
    rng = np.random.default_rng(5)
    splits = [TrainingSplit(test, pool, subsets, normalize(losses))
              for pool, test, subsets, losses in (lexical_task(rng) for _ in range(3))]
    config = TrainConfig(steps=2, lr=1e-12, projection_lr=1e-12, warmup_steps=0, reference_size=4, topk=4,
                         precision="fp32", eval_every=1, validation_splits=1, normalize=True,
                         scale_candidates=[1.0, 5.0], lexical_candidates=[0.0, 1.0, 4.0])
    trained, curve = train_airrep(splits, config, airrep=tiny_airrep(), show_progress_bar=False)
    assert len(curve.initial_lexical_weight) == 1  # a model without fields: one whole-text cosine
    assert curve.initial_lexical_weight[0] in (1.0, 4.0, 5.0, 20.0)  # the channel was chosen, at ratio 1 or 4
    assert trained.lexical_weight == pytest.approx(curve.initial_lexical_weight, rel=1e-6)
    pool, test, subsets, losses = lexical_task(rng)
    with_words = held_out_lds(trained, pool, test, subsets, losses)
    dense = lds(AirRep.score_groups(trained.encode(test), trained.encode(pool), subsets), losses.T)
    assert with_words > 0.45 and with_words > dense + 0.1, (with_words, dense)


def fielded_task(rng, n_pool=48, n_test=16, n_subsets=24, size=8):
    """Influence planted through the response: a pool item helps the test items whose response
    shares its topic word. Each prompt names a topic too, drawn independently, so whole-text
    overlap mixes a decoy with the signal and only the response field isolates it."""
    from airrep.data import format_example
    topics = ["saffron", "quasar", "lichen", "obsidian", "tundra", "zephyr"]
    decoys = ["walnut", "cobalt", "meadow", "falcon", "harbor", "violet"]

    def texts(tags):
        return [format_example(f"write about {decoys[rng.integers(len(decoys))]} {decoys[rng.integers(len(decoys))]}",
                               f"the {topics[t]}") for t in tags]
    pool_tag, test_tag = rng.integers(len(topics), size=n_pool), rng.integers(len(topics), size=n_test)
    pool, test = texts(pool_tag), texts(test_tag)
    subsets = np.array([rng.choice(n_pool, size, replace=False) for _ in range(n_subsets)])
    helped = (pool_tag[subsets][:, :, None] == test_tag[None, None, :]).sum(1)
    return pool, test, subsets, -helped + rng.normal(scale=0.1, size=helped.shape)


def test_each_lexical_field_gets_its_own_weight_and_the_response_field_carries_its_influence():
    from airrep.labels import normalize
    rng = np.random.default_rng(7)
    splits = [TrainingSplit(test, pool, subsets, normalize(losses))
              for pool, test, subsets, losses in (fielded_task(rng) for _ in range(3))]
    config = TrainConfig(steps=2, lr=1e-12, projection_lr=1e-12, warmup_steps=0, reference_size=4, topk=4,
                         precision="fp32", eval_every=1, validation_splits=1, normalize=True,
                         scale_candidates=[1.0, 5.0], lexical_candidates=[0.0, 1.0, 4.0],
                         lexical_fields=["prompt", "response"])
    fielded, curve = train_airrep(splits, config, airrep=tiny_airrep(lexical_fields=["prompt", "response"]),
                                  show_progress_bar=False)
    whole, _ = train_airrep(splits, config, airrep=tiny_airrep(), show_progress_bar=False)
    prompt_weight, response_weight = curve.initial_lexical_weight
    assert response_weight > prompt_weight  # validation picked the field that carries the influence
    assert fielded.lexical_fields == ("prompt", "response") and whole.lexical_fields == ("text",)
    np.testing.assert_allclose(fielded.lexical_weight, curve.initial_lexical_weight, rtol=1e-6)
    pool, test, subsets, losses = fielded_task(rng)
    by_field, by_text = (held_out_lds(m, pool, test, subsets, losses) for m in (fielded, whole))
    assert by_field > 0.5 and by_field > by_text + 0.1, (by_field, by_text)
