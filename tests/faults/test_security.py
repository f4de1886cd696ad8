"""Security scenarios on the real stack (artifacts on a moto S3 server over HTTP, Prefect's
local API, MLflow on sqlite):

- model weights are read only from safetensors: a pickled ``pytorch_model.bin`` that runs code
  when unpickled, published in the artifact store like any model, is refused (or ignored when
  safetensors sit beside it) and its code never runs;
- ``trust_remote_code`` is off unless the config turns it on: code shipped in a model
  directory (``auto_map``) is never imported by default, and the flag that reaches
  transformers is exactly the configured one;
- record ids such as ``../x`` cannot address anything outside the storage prefix, and a
  tampered directory marker cannot write outside the download folder;
- the S3 credentials never appear in logs, stdout/stderr, MLflow params, tags or artifacts,
  Prefect's stored logs, flow-run parameters and artifacts, or anything published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import boto3
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import ViewType
from transformers import AutoTokenizer, BertConfig, BertModel

import airrep.llm
from airrep.config import BaseLLMConfig, load_config
from airrep.llm import BaseLLMError, fingerprint, load_base_llm
from airrep.model import AirRep, AirRepConfig, AirRepModel, resolve_encoder
from airrep.sampling import SubsetIndex
from flows.cli import NOISY_LOGGERS
from flows.label_generation import label_generation
from flows.pipeline import pipeline
from infra import tracking
from infra.storage import ArtifactCorruptError, UnsafeKeyError, open_store, safe_key
from tasks.labels import shared_base_model
from tasks.model import fetch_model_dir

CONFIG = "configs/tiny.yaml"

# Importing a flow (above) configures Prefect's logging at collection time, so its console handler
# writes to pytest's session-long capture rather than to one test's capfd stream (closed after it).
assert pipeline.name == "pipeline" and label_generation.name == "label-generation"

# A label generation that takes seconds: every record is used (the corpus is exactly this large).
SMALL_SAMPLING = [
    "sampling.n_splits=1", "sampling.n_dev=8", "sampling.n_pool=16", "sampling.n_subsets=2",
    "sampling.subset_size=8", "sampling.pretrain_size=0", "sampling.benchmark.n_test=4",
    "sampling.benchmark.n_pool=8", "sampling.benchmark.n_subsets=2", "sampling.benchmark.subset_size=4",
]
SMALL_CORPUS = 4 + 8 + 8 + 16


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``AIRREP_CACHE``: models fetched from the store land here, never in ~/.cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("AIRREP_CACHE", str(path))
    return path


def config_dict(s3_env: str, tmp_path: Path, *overrides: str) -> dict[str, Any]:
    return load_config(CONFIG, [f"storage.uri={s3_env}", f"work_dir={tmp_path / 'work'}", *overrides]) \
        .model_dump(mode="json")


def bucket_objects(storage_uri: str) -> dict[str, bytes]:
    """Every raw object in the store's bucket (any prefix), by key."""
    bucket = urlparse(storage_uri).netloc
    client = boto3.client("s3")
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects


# --- pickled weights --------------------------------------------------------------------------


class TouchOnUnpickle:
    """Unpickling this creates ``marker``: the side effect a malicious checkpoint would have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def plant_pickle(directory: Path, state_dict: dict[str, torch.Tensor], marker: Path) -> None:
    """A ``pytorch_model.bin`` with the real tensors plus an object that runs code on load."""
    torch.save({**state_dict, "payload": TouchOnUnpickle(marker)}, directory / "pytorch_model.bin")


def test_the_planted_checkpoint_runs_code_when_unpickled(tmp_path):
    """Control: the planted file is a live trap (so that 'no marker' below means 'never unpickled')."""
    marker = tmp_path / "control-marker"
    plant_pickle(tmp_path, {"w": torch.zeros(2)}, marker)
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def make_airrep_dir(path: Path) -> AirRep:
    torch.manual_seed(0)
    encoder = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = AirRep(AirRepModel(AirRepConfig(encoder=encoder.to_dict(), max_tokens=32)),
                   AutoTokenizer.from_pretrained(resolve_encoder("minilm")), precision="fp32")
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("with_safetensors", [False, True], ids=["pickle-only", "pickle-beside-safetensors"])
def test_airrep_model_from_the_store_never_unpickles(with_safetensors, s3_env, tmp_path, cache):
    """An AirRep model directory published with a malicious ``pytorch_model.bin`` and fetched the
    way evaluation fetches a trained model (``fetch_model_dir`` + ``AirRep.from_pretrained``):
    without safetensors it is refused with an error that names safetensors; beside safetensors it
    loads the safetensors weights. The pickle's code never runs."""
    source, marker = tmp_path / "airrep-upload", tmp_path / "pwned"
    original = make_airrep_dir(source)
    plant_pickle(source, original.model.state_dict(), marker)
    if not with_safetensors:
        for weights in source.glob("*.safetensors"):
            weights.unlink()
    config = config_dict(s3_env, tmp_path)
    open_store(s3_env).put_dir("models/planted", source)

    fetched = fetch_model_dir(config, "models/planted")

    assert (fetched / "pytorch_model.bin").is_file(), "the planted pickle reached this worker"
    if with_safetensors:
        loaded = AirRep.from_pretrained(fetched, precision="fp32")
        texts = ["### Instruction:\nhello\n\n### Response:\nworld", "another text"]
        assert np.allclose(loaded.encode(texts), original.encode(texts), atol=1e-6)
    else:
        with pytest.raises((OSError, ValueError, RuntimeError)) as refused:
            AirRep.from_pretrained(fetched, precision="fp32")
        assert "safetensors" in str(refused.value)
    assert not marker.exists(), "the pickled checkpoint was unpickled"


@pytest.mark.parametrize("with_safetensors", [False, True], ids=["pickle-only", "pickle-beside-safetensors"])
def test_base_llm_from_the_store_never_unpickles(with_safetensors, tiny_random_lm, s3_env, tmp_path, cache):
    """A base-LLM directory published with a malicious ``pytorch_model.bin`` and loaded the way a
    fine-tune worker loads it (``shared_base_model``: fetched from the store, then
    ``load_base_llm``): without safetensors a ``BaseLLMError`` says pickles are never loaded;
    beside safetensors the safetensors weights load. The pickle's code never runs."""
    source, marker = tmp_path / "llm-upload", tmp_path / "pwned"
    shutil.copytree(tiny_random_lm.path, source)
    plant_pickle(source, tiny_random_lm.model.state_dict(), marker)
    if not with_safetensors:
        for weights in source.glob("*.safetensors"):
            weights.unlink()
    key = safe_key("base-llm", "planted")
    open_store(s3_env).put_dir(key, source)
    llm = {"key": key, "fingerprint": fingerprint(str(source)), "path": str(tmp_path / "not-on-this-worker")}
    config = config_dict(s3_env, tmp_path)

    if with_safetensors:
        model, _ = shared_base_model(config, llm)
        expected = tiny_random_lm.model.state_dict()
        assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())
    else:
        with pytest.raises(BaseLLMError, match="safetensors"):
            shared_base_model(config, llm)
    fetched = next(cache.rglob("pytorch_model.bin"))
    assert fetched.stat().st_size > 0, "the planted pickle reached this worker"
    assert not marker.exists(), "the pickled checkpoint was unpickled"


# --- trust_remote_code -----------------------------------------------------------------------

REMOTE_CODE = """import pathlib

pathlib.Path({marker!r}).touch()

from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast


class RemoteConfig(PretrainedConfig):
    model_type = "remote_arch"


class RemoteModel(PreTrainedModel):
    config_class = RemoteConfig


class RemoteTokenizer(PreTrainedTokenizerFast):
    pass
"""


def plant_remote_code(directory: Path, marker: Path, auto_class: str, custom_architecture: bool) -> None:
    """Ship ``remote.py`` (creates ``marker`` when imported) and point ``auto_map`` at it. With
    ``custom_architecture`` the config's ``model_type`` is one transformers does not know, so
    only the shipped code could load it."""
    (directory / "remote.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "remote.RemoteConfig", auto_class: "remote.RemoteModel"}
    if custom_architecture:
        config["model_type"] = "remote_arch"
    (directory / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "remote.RemoteTokenizer"]}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


@pytest.mark.parametrize("custom_architecture", [False, True], ids=["known-architecture", "custom-architecture"])
def test_base_llm_code_in_the_model_dir_never_runs_by_default(custom_architecture, tiny_random_lm, s3_env, tmp_path,
                                                              cache):
    """A base-LLM directory whose config maps the Auto classes to a shipped ``remote.py``,
    published and loaded the way a fine-tune worker loads it, with the shipped config (where
    ``base_llm.trust_remote_code`` is false): a known architecture loads with transformers' own
    classes, an unknown one is refused with an error naming ``trust_remote_code``; ``remote.py``
    is never imported."""
    source, marker = tmp_path / "llm-upload", tmp_path / "pwned"
    shutil.copytree(tiny_random_lm.path, source)
    plant_remote_code(source, marker, "AutoModelForCausalLM", custom_architecture)
    key = safe_key("base-llm", "remote-code")
    open_store(s3_env).put_dir(key, source)
    llm = {"key": key, "fingerprint": fingerprint(str(source)), "path": str(tmp_path / "not-on-this-worker")}
    config = config_dict(s3_env, tmp_path)
    assert config["base_llm"]["trust_remote_code"] is False

    if custom_architecture:
        with pytest.raises(ValueError, match="trust_remote_code"):
            shared_base_model(config, llm)
    else:
        model, _ = shared_base_model(config, llm)
        assert type(model).__module__.startswith("transformers.")
        expected = tiny_random_lm.model.state_dict()
        assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())
    assert next(cache.rglob("remote.py")).is_file(), "the shipped code reached this worker"
    assert not marker.exists(), "code shipped in the model directory was imported"


@pytest.mark.parametrize("custom_architecture", [False, True], ids=["known-architecture", "custom-architecture"])
def test_encoder_code_in_the_model_dir_never_runs(custom_architecture, tmp_path):
    """``train.encoder`` pointing at a directory with shipped code: ``AirRep.from_encoder`` (what
    training starts from) loads a known architecture with transformers' own classes and refuses an
    unknown one; the shipped code is never imported."""
    source, marker = tmp_path / "encoder", tmp_path / "pwned"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)) \
        .save_pretrained(source)
    AutoTokenizer.from_pretrained(resolve_encoder("minilm")).save_pretrained(source)
    plant_remote_code(source, marker, "AutoModel", custom_architecture)

    if custom_architecture:
        with pytest.raises(ValueError, match="trust_remote_code"):
            AirRep.from_encoder(str(source))
    else:
        assert AirRep.from_encoder(str(source)).dim == 32
    assert not marker.exists(), "code shipped in the encoder directory was imported"


def test_shipped_configs_keep_remote_code_off():
    """No shipped config turns ``trust_remote_code`` on; the default is off."""
    assert BaseLLMConfig().trust_remote_code is False
    paths = sorted(Path("configs").glob("*.yaml"))
    assert paths
    for path in paths:
        assert load_config(path).base_llm.trust_remote_code is False, path


@pytest.mark.parametrize("trust", [False, True], ids=["default", "configured-on"])
def test_trust_remote_code_reaching_transformers_is_the_configured_value(trust, tiny_random_lm, tmp_path,
                                                                         monkeypatch):
    """The value transformers receives for the tokenizer and the model is exactly
    ``base_llm.trust_remote_code``: false by default (then the real load runs, and the shipped
    code stays unimported), true only when the user sets it (then the test stops before
    transformers would import anything)."""
    source, marker = tmp_path / "llm", tmp_path / "pwned"
    shutil.copytree(tiny_random_lm.path, source)
    plant_remote_code(source, marker, "AutoModelForCausalLM", custom_architecture=False)
    settings = load_config(CONFIG, ["base_llm.trust_remote_code=true"] if trust else []).base_llm
    seen: list[tuple[str, Any]] = []

    def spy(real: Any, stand_in: Any) -> SimpleNamespace:
        def from_pretrained(name: str, **kwargs: Any) -> Any:
            seen.append((real.__name__, kwargs.get("trust_remote_code")))
            return stand_in if kwargs.get("trust_remote_code") else real.from_pretrained(name, **kwargs)
        return SimpleNamespace(from_pretrained=from_pretrained)

    stand_in_tokenizer = SimpleNamespace(pad_token_id=0)
    monkeypatch.setattr(airrep.llm, "AutoTokenizer", spy(airrep.llm.AutoTokenizer, stand_in_tokenizer))
    monkeypatch.setattr(airrep.llm, "AutoModelForCausalLM", spy(airrep.llm.AutoModelForCausalLM, object()))

    load_base_llm(str(source), settings)

    assert seen == [("AutoTokenizer", trust), ("AutoModelForCausalLM", trust)]
    assert not marker.exists()


# --- ids and keys that try to leave the prefix ------------------------------------------------

HOSTILE_IDS = ["../x", "../../etc/passwd", "a/../../b", "/abs", "..", ".", "a\\..\\..\\c", "x.complete.json",
               "~/y", "%2e%2e%2fz"]
# safe_key refuses rather than escapes these (a last segment ending in the marker suffix included).
REFUSED_BY_SAFE_KEY = {".", "..", "x.complete.json"}
UNSAFE_KEYS = ["../x", "../../etc/passwd", "a/../../b", "/abs", "..", ".", "a\\..\\..\\c", "x.complete.json"]


def assert_all_inside(keys: list[str], prefix: str) -> None:
    assert keys
    for key in keys:
        assert key.startswith(prefix + "/"), f"{key!r} is outside the prefix {prefix!r}"
        assert not {"", ".", ".."} & set(key.split("/")), f"{key!r} has an empty, '.' or '..' segment"
        assert "\\" not in key, key


def test_hostile_ids_stay_inside_the_prefix(sharegpt_records, tiny_random_lm, micro_overrides, s3_env, tmp_path):
    """Label generation on a corpus whose ids try to climb out (``../x``, ``/abs``, ``..``, a
    marker-like name...): every id is sampled and used, every object it writes is under the
    configured prefix with no ``..`` segment, and nothing is written beside the work directory."""
    corpus = tmp_path / "hostile.jsonl"
    records = sharegpt_records[:SMALL_CORPUS]
    ids = HOSTILE_IDS + [r.id for r in records[len(HOSTILE_IDS):]]
    corpus.write_text("".join(json.dumps({"id": i, "prompt": r.prompt, "response": r.response}) + "\n"
                              for i, r in zip(ids, records, strict=True)))
    work = tmp_path / "work" / "deep"
    overrides = micro_overrides + SMALL_SAMPLING + [
        f"base_llm.name={tiny_random_lm.path}", f"data.source={corpus}", f"work_dir={work}"]

    result = label_generation(load_config(CONFIG, overrides))

    store = open_store(s3_env)
    index = SubsetIndex.from_json(store.get_bytes(result["index"]["key"]).decode())
    used = set(index.benchmark.test) | set(index.benchmark.pool)
    for split in index.splits:
        used |= set(split.dev) | set(split.pool)
    assert set(HOSTILE_IDS) <= used, "every hostile id went through sampling and fine-tuning"
    assert_all_inside(list(bucket_objects(s3_env)), urlparse(s3_env).path.strip("/"))
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and p != corpus and work not in p.parents]
    assert outside == [], f"files written outside the work directory: {outside}"


def test_store_refuses_keys_that_leave_the_prefix(s3_env, tmp_path):
    """Every public store method refuses a key that could leave the prefix; ``safe_key`` turns
    each hostile id into one escaped segment that stays inside it, or refuses it."""
    store = open_store(s3_env)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "f.txt").write_text("f")
    (tmp_path / "file.txt").write_text("f")
    calls = {
        "put_bytes": lambda k: store.put_bytes(k, b"x"), "put_json": lambda k: store.put_json(k, {}),
        "put_file": lambda k: store.put_file(k, tmp_path / "file.txt"),
        "put_dir": lambda k: store.put_dir(k, tmp_path / "dir"), "exists": store.exists,
        "get_bytes": store.get_bytes, "get_json": store.get_json,
        "get_file": lambda k: store.get_file(k, tmp_path / "out.txt"),
        "get_dir": lambda k: store.get_dir(k, tmp_path / "out"), "uri_for": store.uri_for, "list": store.list,
    }
    for key in UNSAFE_KEYS:
        for name, call in calls.items():
            with pytest.raises(UnsafeKeyError):
                call(key)
                pytest.fail(f"{name}({key!r}) was accepted")
    assert bucket_objects(s3_env) == {}
    assert not (tmp_path / "out.txt").exists() and not (tmp_path / "out").exists()

    for hostile in HOSTILE_IDS:
        if hostile in REFUSED_BY_SAFE_KEY:
            with pytest.raises(UnsafeKeyError):
                safe_key("ids", hostile)
            continue
        key = safe_key("ids", hostile)
        assert key.count("/") == 1
        store.put_bytes(key, hostile.encode())
        assert store.get_bytes(key) == hostile.encode()
    assert_all_inside(list(bucket_objects(s3_env)), urlparse(s3_env).path.strip("/"))


def test_tampered_directory_marker_cannot_write_outside_the_download(s3_env, tmp_path, cache):
    """A completion marker planted in the bucket that lists ``../../../escaped.txt`` (with a
    matching object): fetching that model directory fails as corrupt and writes nothing outside
    the download folder."""
    bucket, prefix = urlparse(s3_env).netloc, urlparse(s3_env).path.strip("/")
    payload = b"escaped"
    entry = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    marker = {"format": "airrep-artifact/1", "kind": "dir", "key": "models/tampered",
              "files": {"../../../escaped.txt": entry, "config.json": entry}, "size": 2 * len(payload)}
    client = boto3.client("s3")
    client.put_object(Bucket=bucket, Key=f"{prefix}/models/tampered.complete.json", Body=json.dumps(marker).encode())
    for rel in marker["files"]:
        client.put_object(Bucket=bucket, Key=f"{prefix}/models/tampered/{rel}", Body=payload)

    with pytest.raises(ArtifactCorruptError, match="unsafe path"):
        fetch_model_dir(config_dict(s3_env, tmp_path), "models/tampered")

    assert [p for p in tmp_path.rglob("escaped.txt")] == []


# --- credentials -----------------------------------------------------------------------------


def _prefect_texts(started: datetime, credentials: dict[str, str]) -> dict[str, str]:
    """What Prefect's API stored about this test's runs: parameters, artifacts, matching logs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterTextSearch,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    texts: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)))
        assert {r.name for r in runs} and any(r.parameters.get("config") for r in runs)  # the whole config
        for run in runs:
            texts[f"prefect flow run {run.name} parameters"] = json.dumps(run.parameters, default=str)
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id={"any_": [r.id for r in runs]}))
        texts["prefect artifacts"] = json.dumps([a.model_dump(mode="json") for a in artifacts], default=str)
        found = client.read_logs(LogFilter(text=LogFilterTextSearch(query="subset index at")))
        assert found, "Prefect's log search works (control)"
        for which, value in credentials.items():
            hits = client.read_logs(LogFilter(text=LogFilterTextSearch(query=value)))
            texts[f"prefect logs matching the {which}"] = "\n".join(h.message for h in hits)
    return texts


def _mlflow_texts(config) -> dict[str, str]:
    client = MlflowClient(tracking_uri=tracking.tracking_uri(config))
    texts: dict[str, str] = {}
    runs = 0
    for experiment in client.search_experiments(view_type=ViewType.ALL):
        texts[f"mlflow experiment {experiment.name}"] = json.dumps(dict(experiment.tags)) + experiment.artifact_location
        for run in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL):
            runs += 1
            texts[f"mlflow run {run.info.run_id} params"] = json.dumps(run.data.params)
            texts[f"mlflow run {run.info.run_id} tags"] = json.dumps(run.data.tags)
            texts[f"mlflow run {run.info.run_id} info"] = json.dumps(dict(run.info), default=str)
    assert runs and any(texts[k] != "{}" for k in texts if k.endswith("params")), "MLflow runs were scanned"
    versions = 0
    for model in client.search_registered_models():
        texts[f"mlflow model {model.name}"] = json.dumps(model.tags) + (model.description or "")
        for version in client.search_model_versions(f"name = '{model.name}'"):
            versions += 1
            texts[f"mlflow model {model.name} v{version.version}"] = json.dumps(
                {"tags": version.tags, "source": version.source, "description": version.description,
                 "aliases": version.aliases}, default=str)
    assert versions, "registered model versions were scanned"
    return texts


@pytest.mark.slow
def test_credentials_never_leave_the_environment(micro_overrides, tmp_path, monkeypatch, caplog, capfd):
    """The whole micro pipeline with distinctive S3 credentials (an access key id, a secret and a
    session token), every logger at DEBUG: none of them appears in any log record (botocore's
    request logs included), stdout/stderr, the result, MLflow's params, tags, registered versions
    or its database file, any file in the work directory, any object in the bucket (artifacts and
    MLflow artifacts alike, metadata included), or what Prefect's API stored (flow-run
    parameters, artifacts, logs)."""
    credentials = {"access key id": "AKIA" + uuid.uuid4().hex[:16].upper(), "secret": secrets.token_urlsafe(30),
                   "session token": "FwoG" + secrets.token_urlsafe(60)}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", credentials["access key id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credentials["secret"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", credentials["session token"])
    in_use = boto3.session.Session().get_credentials()
    assert (in_use.access_key, in_use.secret_key, in_use.token) == tuple(credentials.values()), "S3 calls use them"
    caplog.set_level(logging.DEBUG)
    for quieted in NOISY_LOGGERS:  # at DEBUG, as `airrep -v` has them
        caplog.set_level(logging.DEBUG, logger=quieted)  # (an earlier CLI test may have quieted them)
    started = datetime.now(UTC)

    result = pipeline(load_config(CONFIG, micro_overrides))

    assert result["registry"]["version"]
    assert any(r.name == "botocore.endpoint" and r.levelno == logging.DEBUG for r in caplog.records), \
        "botocore's request logs were captured (and are scanned)"
    config = load_config(CONFIG, micro_overrides)
    out, err = capfd.readouterr()
    texts: dict[str, str | bytes] = {"stdout": out, "stderr": err, "caplog text": caplog.text,
                                     "pipeline result": json.dumps(result, default=str)}
    by_logger: dict[str, list[str]] = {}
    for record in caplog.records:
        by_logger.setdefault(record.name, []).append(record.getMessage() + (record.exc_text or ""))
    texts.update({f"log records of {name}": "\n".join(lines) for name, lines in by_logger.items()})
    texts.update(_mlflow_texts(config))
    texts.update(_prefect_texts(started, credentials))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts[f"file {path.relative_to(tmp_path)}"] = path.read_bytes()
    assert any(name.endswith("mlflow.db") for name in texts), "MLflow's database file was scanned"
    bucket = urlparse(config.storage.uri).netloc
    objects = bucket_objects(config.storage.uri)
    assert any("/mlflow/" in key for key in objects) and any("/finetunes/" in key for key in objects)
    client = boto3.client("s3")
    for key, data in objects.items():
        texts[f"object {key}"] = data
        texts[f"object {key} metadata"] = json.dumps(client.head_object(Bucket=bucket, Key=key).get("Metadata", {}))

    leaks = [f"{which} in {where}" for where, text in texts.items() for which, value in credentials.items()
             if (value.encode() if isinstance(text, bytes) else value) in text]
    assert leaks == [], "credentials leaked:\n" + "\n".join(leaks)
