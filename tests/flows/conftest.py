"""The real default stack for flow tests: Prefect's local API (one per session), MLflow on
sqlite with its registry, artifacts on a moto S3 server over HTTP, and a micro config of
the tiny pipeline (real ShareGPT text, a tiny LM pretrained here, the packaged MiniLM)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

MICRO = [
    "sampling.n_splits=2", "sampling.n_dev=30", "sampling.n_pool=120", "sampling.n_subsets=4",
    "sampling.subset_size=40", "sampling.pretrain_size=800",
    "sampling.benchmark.n_test=20", "sampling.benchmark.n_pool=60", "sampling.benchmark.n_subsets=4",
    "sampling.benchmark.subset_size=20",
    "base_llm.tiny.vocab_size=2000", "base_llm.tiny.hidden_size=64", "base_llm.tiny.intermediate_size=256",
    "base_llm.tiny.num_heads=2", "base_llm.tiny.lr=3e-3", "finetune.max_length=128",
    "train.steps=3", "train.eval_every=3", "train.reference_size=8", "train.topk=4", "train.max_tokens=64",
    "evaluate.methods=[airrep,airrep-sum,encoder,encoder-sum,tfidf,tfidf-sum,logra]",
    "evaluate.gradient_proj_dim={logra: 64}", "orchestration.task_retry_delay_seconds=0",
]


@pytest.fixture(scope="session", autouse=True)
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def micro() -> list[str]:
    """The micro pipeline's overrides, without the storage and work directory."""
    return list(MICRO)


@pytest.fixture
def micro_overrides(tmp_path: Path, s3_env: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Overrides that put every artifact on S3 and MLflow's sqlite store in ``tmp_path``."""
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
    return MICRO + [f"work_dir={tmp_path}", f"storage.uri={s3_env}"]
