"""precision: auto picks bf16 only where the hardware computes in it natively."""

import pytest
import torch

from airrep import precision


@pytest.mark.parametrize("fast", [True, False])
def test_auto_follows_the_cpus_bf16_support(monkeypatch, fast):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    assert precision.resolve_precision("auto", "cpu") == ("bf16" if fast else "fp32")


@pytest.mark.parametrize("value", ["bf16", "fp32", "fp16"])
def test_explicit_precisions_are_kept(value):
    assert precision.resolve_precision(value, "cpu") == value


def test_cpu_check_reads_torchs_instruction_set_probes(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert precision.cpu_has_fast_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.cpu_has_fast_bf16() is True


def test_finetune_key_records_the_precision_that_ran(monkeypatch):
    from airrep.config import FinetuneConfig
    from airrep.plan import job

    def finetune_key(llm, members, eval_ids, settings, seed):
        return job(llm, settings, members, eval_ids, seed, "test").key

    auto = FinetuneConfig(precision="auto")
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert finetune_key("llm", ["a"], ["b"], auto, 0) == finetune_key("llm", ["a"], ["b"], auto.model_copy(
        update={"precision": "fp32"}), 0)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert finetune_key("llm", ["a"], ["b"], auto, 0) == finetune_key("llm", ["a"], ["b"], auto.model_copy(
        update={"precision": "bf16"}), 0)
