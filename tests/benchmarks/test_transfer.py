"""The transfer benchmark's core at toy size: two base LMs of different architecture (a Llama
and a GPT-2), each with a held-out benchmark of real fine-tunes, two AirReps, and the table of
every AirRep on every benchmark against the registry's baselines built for that LM."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from transformers import AutoTokenizer, BertConfig, GPT2Config, GPT2LMHeadModel

from airrep.config import load_config
from airrep.evaluate import BenchmarkData
from airrep.finetune import finetune_and_evaluate, make_accelerator, per_example_loss, tokenize_records
from airrep.llm import fingerprint, load_base_llm
from airrep.model import AirRep, AirRepConfig, AirRepModel, resolve_encoder
from benchmarks.transfer import COLUMNS, SECTION, LMInputs, transfer_results, write_report

N_TEST, N_POOL, SUBSETS, SUBSET_SIZE = 6, 24, 4, 8


def _airrep(seed: int) -> AirRep:
    """A small random AirRep; each seed is another model (a stand-in for each LM's training)."""
    torch.manual_seed(seed)
    encoder = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=30522)
    return AirRep(AirRepModel(AirRepConfig(encoder=encoder.to_dict(), max_tokens=32, lexical=True)),
                  AutoTokenizer.from_pretrained(resolve_encoder("minilm")), precision="fp32")


def _gpt2_beside(tiny_random_lm, path) -> str:
    """A random GPT-2 with the Llama's tokenizer, saved as safetensors."""
    tokenizer = tiny_random_lm.tokenizer
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=48, n_layer=2, n_head=3, n_positions=160,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


def _inputs(config, llm_path: str, records, trained: AirRep) -> LMInputs:
    """The LM's benchmark from real fine-tunes of each held-out subset, scored on the test set."""
    model, tokenizer = load_base_llm(llm_path, config.base_llm)
    test, pool = records[:N_TEST], records[N_TEST:N_TEST + N_POOL]
    rng = np.random.default_rng(0)
    subsets = np.stack([rng.choice(N_POOL, SUBSET_SIZE, replace=False) for _ in range(SUBSETS)])
    losses = np.stack([finetune_and_evaluate(model, tokenizer, [pool[i] for i in members], test, config.finetune,
                                             seed=j)[0] for j, members in enumerate(subsets)])  # (n_subsets, n_test)
    before = per_example_loss(model, tokenize_records(tokenizer, test, config.finetune.max_length),
                              tokenizer.pad_token_id, 8, make_accelerator("fp32"))
    report = {"parameters": sum(p.numel() for p in model.parameters()), "pretraining": {},
              "test_loss_base": float(before.mean()), "test_loss_finetuned": float(losses.mean())}
    return LMInputs(config, BenchmarkData(test, pool, subsets, losses), trained, llm_path, fingerprint(llm_path),
                    report, {"pipeline_run": True, "model_key": f"models/toy-{llm_path[-6:]}"})


def test_every_cell_of_the_transfer_table_is_measured(tiny_random_lm, sharegpt_records, tmp_path):
    config = load_config("configs/tiny.yaml", ["evaluate.gradient_proj_dim={logra: 16}", "finetune.max_length=64",
                                               "finetune.epochs=1", "finetune.precision=fp32"], environ={})
    records = sharegpt_records[1000:1000 + N_TEST + N_POOL]
    lms = {"llama": _inputs(config, str(tiny_random_lm.path), records, _airrep(0)),
           "gpt2": _inputs(config, _gpt2_beside(tiny_random_lm, tmp_path / "gpt2"), records, _airrep(1))}
    results = transfer_results(lms)
    assert results["lms"]["llama"]["fingerprint"] != results["lms"]["gpt2"]["fingerprint"]
    for bench_lm in lms:
        assert set(results["table"][bench_lm]) == set(COLUMNS)
        assert all(math.isfinite(v) and -1 <= v <= 1 for v in results["table"][bench_lm].values())
    # Another AirRep scores the same benchmark differently; the baselines differ across LMs only through
    # the losses (encoder, TF-IDF) or the LM's own gradients too (LoGra).
    assert results["table"]["gpt2"]["airrep<-llama"] != results["table"]["gpt2"]["airrep<-gpt2"]
    assert set(results["ratios"]) == {"llama->gpt2", "gpt2->llama"}
    assert all(math.isfinite(r) for r in results["ratios"].values())

    results = {**results, "seconds": {"llama": 1.0, "gpt2": 2.0, "table": 3.0}}
    markdown = tmp_path / "RESULTS.md"
    markdown.write_text("# Results\n\n## Data selection (Natural Instructions)\n\ntext\n")
    files = write_report(results, tmp_path / "results", markdown)
    assert all(f.exists() for f in files)
    assert json.loads(files[0].read_text())["table"] == results["table"]
    report = markdown.read_text()
    assert report.count(SECTION) == 1 and "## Data selection" in report
    assert f"{100 * results['table']['gpt2']['airrep<-llama']:.2f}" in report
    write_report(results, tmp_path / "results", markdown)  # a re-run replaces the section in place
    assert markdown.read_text() == report
