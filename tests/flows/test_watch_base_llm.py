"""Retrain on a base-LLM change: unchanged → nothing runs; changed → a new version is
registered with the new fingerprint and the stale champion is re-scored before promotion."""

from __future__ import annotations

import shutil

import pytest
from mlflow import MlflowClient

from airrep.config import FinetuneConfig, load_config
from airrep.finetune import make_accelerator, tokenize_records, train_lm
from airrep.llm import fingerprint, load_base_llm
from flows.label_generation import label_generation
from flows.pipeline import pipeline
from flows.watch_base_llm import watch_base_llm
from infra import tracking
from tasks.common import records_by_id

pytestmark = pytest.mark.slow  # end to end: scheduled first (conftest)


def one_more_pretraining_step(model_dir, config) -> None:
    """Change the base LLM the way a team would: train it a little further, save safetensors."""
    model, tokenizer = load_base_llm(str(model_dir), config.base_llm)
    records = list(records_by_id(config).values())[-16:]
    examples = tokenize_records(tokenizer, records, config.finetune.max_length, train_on_prompt=True)
    settings = FinetuneConfig(epochs=1, lr=1e-3, batch_size=16, precision="fp32")
    train_lm(model, examples, tokenizer.pad_token_id, settings, seed=0, accelerator=make_accelerator("fp32"))
    model.save_pretrained(model_dir, safe_serialization=True)


def test_watch_retrains_only_when_the_base_llm_changes(micro_overrides, tmp_path):
    # A local base-LLM directory (what a team points base_llm.name at): the micro tiny LM.
    tiny = label_generation(load_config("configs/tiny.yaml", micro_overrides))["llm"]["path"]
    base_dir = tmp_path / "base-llm"
    shutil.copytree(tiny, base_dir)
    overrides = micro_overrides + [f"base_llm.name={base_dir}"]
    config = load_config("configs/tiny.yaml", overrides)
    name = tracking.registered_model_name(config)

    first = pipeline(config)
    assert first["registry"]["promoted"]
    old_fp = first["llm"]["fingerprint"]

    unchanged = watch_base_llm(config)
    assert unchanged == {"changed": False, "fingerprint": old_fp}
    versions_before = {v.version for v in MlflowClient().search_model_versions(f"name = '{name}'")}

    one_more_pretraining_step(base_dir, config)
    new_fp = fingerprint(str(base_dir))
    assert new_fp != old_fp

    changed = watch_base_llm(config)
    assert changed["changed"] and changed["previous"] == old_fp and changed["fingerprint"] == new_fp
    result = changed["pipeline"]
    assert result["finetunes_computed"] > 0, "new base LLM: every fine-tune is new work"
    client = MlflowClient()
    new_versions = [v for v in client.search_model_versions(f"name = '{name}'")
                    if v.version not in versions_before]
    assert [v.tags["base_llm_fingerprint"] for v in new_versions] == [new_fp]
    # Promotion compared both models on the new benchmark: the old champion was re-scored on it.
    champion = tracking.champion_info(name)
    assert champion["tags"]["benchmark_fingerprint"] == result["benchmark_fingerprint"]
    assert result["evaluation"]["champion_lds"] is not None

    again = watch_base_llm(config)
    # Promoted or not, the new base LLM was evaluated: an unchanged LLM never triggers again.
    assert again == {"changed": False, "fingerprint": new_fp}
