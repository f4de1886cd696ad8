"""Session fixtures shared by the tests: real ShareGPT records, tiny Llama LMs, and a real
S3 server (``moto_server`` on 127.0.0.1, its own process, spoken to over HTTP exactly as
MinIO or AWS would be; nothing inside boto3 is patched).

The first ``PRETRAIN_COUNT`` ShareGPT records pretrain ``pretrained_tiny_lm``; tests that
need records the LM has never seen take them from ``heldout_records``, which also leaves
out every conversation (group) that has a chunk in the pretraining slice.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# The tests' Prefect home is their own (``make`` points PREFECT_HOME at the project's .work,
# which `make run` keeps for its runs): set before Prefect is first imported, which reads it.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="airrep-tests-prefect-home-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

import boto3
import numpy as np
import prefect.main  # noqa: F401  (Prefect sets up its logging on first import: do it before any capfd test)
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from airrep.config import BaseLLMConfig, DataConfig, TinyLMConfig, load_config
from airrep.corpora import load_records
from airrep.data import Record, format_record
from airrep.llm import build_tiny_lm, train_tokenizer
from airrep.transformers_lock import TRANSFORMERS_LOCK
from infra.storage import open_store

PRETRAIN_COUNT = 800
TOKENIZER_TEXTS = 200

# The tiny LM used by the "labels mean something" and end-to-end tests (small enough to
# pretrain on 2 CPU cores in well under a minute; cached by content key afterwards).
TINY_LM = TinyLMConfig(
    vocab_size=2000, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256,
    epochs=2, lr=3e-3, batch_size=16,
)
TINY_LM_MAX_LENGTH = 128


def pytest_configure(config: pytest.Config) -> None:
    # The models here are tiny: one thread is as fast as two on an idle 2-core machine, and
    # OpenMP threads that spin-wait for a busy core make every op ~10x slower under load.
    torch.set_num_threads(1)
    # The same for the processes the tests start (the installed CLI, the GPU recipe, workers),
    # which would otherwise each take every core; a test that gives a process its own count
    # (a local Dask cluster's share of the cores) still does.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """End-to-end (``slow``) tests first: with several test processes (pytest-xdist), the
    long runs start at once and the short tests fill in around them, instead of one long
    run starting last and holding up the whole suite."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@dataclass
class TinyModel:
    model: LlamaForCausalLM
    tokenizer: object
    path: Path


@pytest.fixture(scope="session")
def sharegpt_records() -> list[Record]:
    return load_records(DataConfig(source="sharegpt"))[0]


@pytest.fixture(scope="session")
def pretrain_records(sharegpt_records: list[Record]) -> list[Record]:
    """The slice ``pretrained_tiny_lm`` is trained on; never a dev or train record elsewhere."""
    return sharegpt_records[:PRETRAIN_COUNT]


@pytest.fixture(scope="session")
def heldout_records(sharegpt_records: list[Record], pretrain_records: list[Record]) -> list[Record]:
    """Records after the pretraining slice whose conversation has no chunk in it."""
    seen_groups = {r.group_id for r in pretrain_records}
    return [r for r in sharegpt_records[PRETRAIN_COUNT:] if r.group_id not in seen_groups]


@pytest.fixture(scope="session")
def tiny_random_lm(sharegpt_records: list[Record], tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A randomly initialised 1-layer Llama with a 500-token BPE vocabulary, saved as safetensors."""
    tokenizer = train_tokenizer([format_record(r) for r in sharegpt_records[:TOKENIZER_TEXTS]], 500)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=160,
        tie_word_embeddings=True, attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(1234)
    with TRANSFORMERS_LOCK:
        model = LlamaForCausalLM(config)
    model.eval()
    path = tmp_path_factory.mktemp("tiny_random_lm")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return TinyModel(model=model, tokenizer=tokenizer, path=path)


@dataclass(frozen=True)
class TinyLMSettings:
    config: BaseLLMConfig
    max_length: int


@pytest.fixture(scope="session")
def tiny_lm_settings() -> TinyLMSettings:
    """What ``pretrained_tiny_lm`` is built with (the end-to-end test reuses the sizes)."""
    return TinyLMSettings(BaseLLMConfig(tiny=TINY_LM), TINY_LM_MAX_LENGTH)


@pytest.fixture(scope="session")
def pretrained_tiny_lm(pretrain_records: list[Record], tiny_lm_settings: TinyLMSettings) -> Path:
    """The tiny LM pretrained on ``pretrain_records`` (cached under the airrep cache dir)."""
    return build_tiny_lm(pretrain_records, tiny_lm_settings.config, max_length=tiny_lm_settings.max_length)


# --- S3 ---------------------------------------------------------------------------------

S3_KEY_ID = "testing-key-id"
S3_SECRET = "testing-secret"
SERVER_START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers_http(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server process, terminated at the end of the session."""
    script = Path(sys.executable).parent / "moto_server"
    if not script.exists():
        pytest.fail(f"{script} not found: install the dev extras (moto[server]) into this venv")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(script), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not _answers_http(endpoint):
            if process.poll() is not None:
                pytest.fail(f"moto_server exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"moto_server did not answer on {endpoint} within {SERVER_START_TIMEOUT:.0f} s")
            time.sleep(0.05)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Point boto3 at the server through the environment only; yield ``s3://<fresh bucket>/prefix``."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Keep the developer's own AWS setup out of the tests.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    bucket = f"artifacts-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/prefix"


# The micro config of the tiny pipeline: every stage runs in seconds on real ShareGPT text.
MICRO = [
    "sampling.n_splits=2", "sampling.n_dev=30", "sampling.n_pool=120", "sampling.n_subsets=4",
    "sampling.subset_size=40", "sampling.pretrain_size=800",
    "sampling.benchmark.n_test=20", "sampling.benchmark.n_pool=60", "sampling.benchmark.n_subsets=4",
    "sampling.benchmark.subset_size=20",
    "base_llm.tiny.vocab_size=2000", "base_llm.tiny.hidden_size=64", "base_llm.tiny.intermediate_size=256",
    "base_llm.tiny.num_heads=2", "base_llm.tiny.lr=3e-3", "finetune.max_length=128",
    "train.steps=3", "train.eval_every=3", "train.reference_size=8", "train.topk=4", "train.max_tokens=64",
    # AirRep and one baseline, no repeated benchmark fine-tunes: what the orchestration and
    # fault tests need. test_pipeline adds every method and the noise ceiling (full_evaluation).
    "evaluate.methods=[airrep,tfidf]", "evaluate.noise_ceiling=false",
    "evaluate.gradient_proj_dim={logra: 64}", "orchestration.task_retry_delay_seconds=0",
    "orchestration.max_workers=1",  # in-process, no worker start per fan-out (test_fanout_runners runs several)
]


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def full_evaluation() -> list[str]:
    """Overrides that make the micro pipeline evaluate every CPU method and the noise ceiling."""
    return ["evaluate.methods=[airrep,airrep-sum,airrep-dense,airrep-lexical,encoder,encoder-sum,tfidf,tfidf-sum,"
            "logra]",
            "evaluate.noise_ceiling=true"]


@pytest.fixture
def micro() -> list[str]:
    """The micro pipeline's overrides, without the storage and work directory."""
    return list(MICRO)


@pytest.fixture
def micro_overrides(tmp_path: Path, s3_env: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Overrides that put every artifact on S3 and MLflow's sqlite store in ``tmp_path``."""
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
    return MICRO + [f"work_dir={tmp_path}", f"storage.uri={s3_env}"]


PublishedLabels = Callable[[dict, list[str]], list[np.ndarray]]


@pytest.fixture
def published_labels() -> PublishedLabels:
    """Reads the per-subset dev-loss arrays a ``label_generation`` result points to, from the
    store its overrides name (so two runs on two stores can be compared array by array)."""

    def read(result: dict, overrides: list[str]) -> list[np.ndarray]:
        store = open_store(load_config("configs/tiny.yaml", overrides).storage.uri)
        arrays = []
        for key in result["label_keys"]:
            with np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False) as data:
                arrays.append(data["losses"])
        return arrays

    return read
