"""MLflow tracking, registry and the attribution pyfunc against a real MLflow store.

One sqlite database (runs + registry) and one file artifact location per module, as in the
default stack; each test registers its own model name so tests stay independent. Extra model
versions for the promotion tests point at one logged model (registering costs milliseconds,
logging seconds); promotion reads only version tags and aliases.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from transformers import AutoTokenizer, BertConfig

from airrep.config import PipelineConfig, load_config
from airrep.evaluate import LDSTable, MethodResult
from airrep.model import AirRep, AirRepConfig, AirRepModel, resolve_encoder
from airrep.train import TrainingCurve
from infra import tracking

SECRET = "s3cr3t-" + uuid.uuid4().hex
BENCH_A, BENCH_B = "bench-a", "bench-b"

CORPUS_TEXTS = [
    "How do I reverse a linked list in Python without using extra memory?",
    "Write a haiku about the first snow falling on a quiet mountain village.",
    "Explain the difference between TCP and UDP for a networking beginner.",
    "What are the health benefits of drinking green tea every morning?",
    "Translate 'where is the train station' into French and Spanish.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "Give me a recipe for a vegetarian lasagna with spinach and ricotta.",
    "Why is the sky blue during the day and red at sunset?",
    "Write a SQL query that returns the ten customers with the highest total orders.",
    "What is the capital of Australia and why is it not Sydney?",
    "Suggest five names for a small bakery that sells sourdough bread.",
    "How does compound interest work on a savings account over ten years?",
    "Draft a polite email asking my landlord to repair the heating.",
    "Explain photosynthesis to a ten year old child.",
    "What are good exercises to strengthen the lower back after an injury?",
    "Compare the electric cars from three manufacturers on range and price.",
    "Write a short bedtime story about a dragon who is afraid of the dark.",
    "How can I speed up a slow pandas groupby on a large dataframe?",
    "List the planets of the solar system in order from the sun.",
    "What caused the fall of the Western Roman Empire?",
    "Help me plan a three day hiking trip in the Scottish Highlands.",
    "Explain what a neural network is using an analogy with the brain.",
    "Write a cover letter for a junior data analyst position.",
    "How do vaccines train the immune system to fight infections?",
    "Give tips for growing tomatoes on a small city balcony.",
    "What is the difference between a virus and a bacterium?",
    "Create a weekly budget template for a family of four.",
    "Describe the rules of chess for someone who has never played.",
    "How do I configure a firewall on an Ubuntu server with ufw?",
    "Write a limerick about a cat who learned to play the piano.",
]
CORPUS_IDS = [f"conv{i:02d}_0" for i in range(len(CORPUS_TEXTS))]


@dataclass
class Registry:
    config: PipelineConfig
    uri: str
    client: MlflowClient
    tiny_model_dir: Path
    tmp: Path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A sqlite tracking + registry store and a file artifact location in a temp dir."""
    tmp = tmp_path_factory.mktemp("mlflow")
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        # The code version comes from the package version here, not from running git.
        patch.setattr(tracking, "_git_commit", lambda: None)
        config = load_config(overrides=[f"work_dir={tmp / 'work'}", "data.source=sharegpt"], environ={})
        tracking.ensure_experiment(config)
        torch.manual_seed(0)
        encoder = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, vocab_size=30522)
        tiny = AirRep(AirRepModel(AirRepConfig(encoder=encoder.to_dict())),
                      AutoTokenizer.from_pretrained(resolve_encoder("minilm")), device="cpu")
        tiny.save_pretrained(tmp / "tiny_airrep")
        yield Registry(config, tracking.tracking_uri(config), MlflowClient(), tmp / "tiny_airrep", tmp)
    mlflow.set_tracking_uri(previous_uri)


@dataclass
class Logged:
    run_id: str
    version: ModelVersion
    tags: dict[str, str]
    name: str


@pytest.fixture(scope="module")
def logged(registry: Registry) -> Logged:
    """One full pipeline-style run: params, training curve, LDS table, attribution pyfunc."""
    config = registry.config
    name = f"{tracking.registered_model_name(config)}-log"
    tags = tracking.standard_tags(config, "llm-fp", "corpus-fp", BENCH_A, 0.25)
    curve = TrainingCurve(step=[1, 2, 3, 4], loss=[1.0, 0.8, 0.7, 0.6],
                          pair_accuracy=[0.5, 0.6, 0.65, 0.7], eval_step=[2, 4], eval_lds=[0.1, 0.2],
                          seconds=3.5)
    table = LDSTable([MethodResult("airrep", 0.25, 32, 1.0), MethodResult("tfidf", 0.05, 900, 0.2),
                      MethodResult("logra", float("nan"), None, 0.0, note="needs a GPU")], noise_ceiling=0.4)
    files = table.save(registry.tmp / "evaluation")
    with mlflow.start_run(tags=tags) as run:
        mlflow.log_params(tracking.config_params(config))
        tracking.log_training(curve)
        tracking.log_lds_table(table, files)
        version = tracking.log_attribution_model(registry.tiny_model_dir, CORPUS_IDS, CORPUS_TEXTS, name,
                                                 top_k=5, tags=tags)
    return Logged(run.info.run_id, version, tags, name)


def _add_version(registry: Registry, logged: Logged, name: str, lds: float, benchmark: str) -> str:
    """A registered version of the already-logged model, tagged as ``log_attribution_model`` does."""
    try:
        registry.client.create_registered_model(name)
    except MlflowException:
        pass  # already registered
    tags = {"lds": repr(float(lds)), "benchmark_fingerprint": benchmark}
    version = registry.client.create_model_version(name, logged.version.source, tags=tags)
    return str(version.version)


def _champion_versions(client: MlflowClient, name: str) -> list[str]:
    return [str(v.version) for v in client.search_model_versions(f"name = '{name}'")
            if tracking.CHAMPION in client.get_model_version(name, v.version).aliases]


def test_default_locations_and_names(tmp_path: Path) -> None:
    config = PipelineConfig(work_dir=str(tmp_path))
    assert tracking.tracking_uri(config) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.artifact_location(config) == f"file://{tmp_path.resolve()}/mlartifacts"
    assert tracking.registered_model_name(config) == "airrep-sharegpt"
    s3 = PipelineConfig(work_dir=str(tmp_path), storage={"uri": "s3://bucket/runs/"})
    assert tracking.artifact_location(s3) == "s3://bucket/runs/mlflow"
    assert tracking.registered_model_name(PipelineConfig(data={"source": "/data/My Chats.jsonl"})) \
        == "airrep-my-chats"
    explicit = PipelineConfig(tracking={"uri": "http://mlflow:5000", "artifact_location": "s3://b/a",
                                        "registered_model": "attrib"})
    assert (tracking.tracking_uri(explicit), tracking.artifact_location(explicit),
            tracking.registered_model_name(explicit)) == ("http://mlflow:5000", "s3://b/a", "attrib")


def test_config_params_are_flat_and_hold_no_secrets() -> None:
    config = PipelineConfig(tracking={"uri": f"postgresql://mlflow:{SECRET}@db:5432/mlflow"})
    params = tracking.config_params(config)
    assert params["finetune.lr"] == "0.0003"
    assert params["train.max_tokens"] == "128"
    assert json.loads(params["evaluate.methods"])[0] == "airrep"
    assert params["data.limit"] == "null"
    assert params["tracking.uri"] == "postgresql://mlflow:***@db:5432/mlflow"
    assert all(SECRET not in value for value in params.values())
    assert all(len(value) <= tracking.MAX_PARAM_VALUE for value in params.values())
    assert tracking._is_secret("storage.secret_access_key") and tracking._is_secret("hub.TOKEN")


def test_code_version_prefers_the_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "_git_commit", lambda: "a" * 40)
    assert tracking.code_version() == "a" * 40
    monkeypatch.setattr(tracking, "_git_commit", lambda: None)
    assert tracking.code_version() == "0.1.0"


def test_run_and_registered_version(registry: Registry, logged: Logged) -> None:
    client = registry.client
    experiment = client.get_experiment_by_name(registry.config.tracking.experiment)
    assert experiment.artifact_location == tracking.artifact_location(registry.config)
    run = client.get_run(logged.run_id)
    assert run.data.params["finetune.lr"] == "0.0003"
    assert SECRET not in run.data.params.values()
    assert all(SECRET not in v for v in list(run.data.params.values()) + list(run.data.tags.values()))
    assert [m.step for m in client.get_metric_history(logged.run_id, "train_loss")] == [1, 2, 3, 4]
    assert [m.value for m in client.get_metric_history(logged.run_id, "validation_lds")] == [0.1, 0.2]
    assert run.data.metrics["train_pair_accuracy"] == 0.7
    assert run.data.metrics["lds_airrep"] == 0.25 and run.data.metrics["noise_ceiling"] == 0.4
    assert "lds_logra" not in run.data.metrics
    assert run.data.tags["lds_logra_skipped"] == "needs a GPU"
    assert {f.path for f in client.list_artifacts(logged.run_id, "evaluation")} == {
        "evaluation/lds_table.json", "evaluation/lds_table.md", "evaluation/lds.png"}

    version = client.get_model_version(logged.name, logged.version.version)
    assert tracking.CHALLENGER in version.aliases
    example = mlflow.models.Model.load(version.source).load_input_example(
        mlflow.artifacts.download_artifacts(version.source))
    assert list(pd.DataFrame(example).iloc[:, 0]) == [CORPUS_TEXTS[0]]
    assert version.run_id == logged.run_id
    assert set(logged.tags) == {"base_llm_fingerprint", "corpus_fingerprint", "config_hash", "code_version",
                                "benchmark_fingerprint", "lds"}
    assert {k: version.tags[k] for k in logged.tags} == logged.tags
    assert version.tags["config_hash"] == registry.config.fingerprint()
    assert version.tags["code_version"] == "0.1.0"
    # The logged model lives under the experiment's artifact location, not ./mlruns.
    model_root = Path(tracking.artifact_location(registry.config)[len("file://"):]) / "models"
    [model_dir] = [p for p in model_root.iterdir() if (p / "artifacts" / "MLmodel").exists()]
    requirements = (model_dir / "artifacts" / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert any(r.startswith("transformers==") for r in requirements)
    code = model_dir / "artifacts" / "code"
    assert (code / "airrep" / "model.py").exists() and (code / "infra" / "serving.py").exists()
    assert not (code / "infra" / "deploy").exists() and not list(code.rglob("__pycache__"))


def test_promotion_rules(registry: Registry, logged: Logged) -> None:
    name = "airrep-promotion-rules"
    first = _add_version(registry, logged, name, 0.30, BENCH_A)
    assert tracking.champion_info(name) is None
    assert tracking.promote(name, first, 0.30, BENCH_A, margin=0.0)
    assert tracking.champion_info(name)["version"] == first

    worse = _add_version(registry, logged, name, 0.25, BENCH_A)
    assert not tracking.promote(name, worse, 0.25, BENCH_A, margin=0.0)
    assert tracking.champion_info(name)["version"] == first

    within_margin = _add_version(registry, logged, name, 0.32, BENCH_A)
    assert not tracking.promote(name, within_margin, 0.32, BENCH_A, margin=0.05)

    better = _add_version(registry, logged, name, 0.40, BENCH_A)
    assert tracking.promote(name, better, 0.40, BENCH_A, margin=0.05)
    champion = tracking.champion_info(name)
    assert champion["version"] == better and float(champion["tags"]["lds"]) == 0.40

    nan = _add_version(registry, logged, name, float("nan"), BENCH_A)
    assert not tracking.promote(name, nan, float("nan"), BENCH_A)
    assert not tracking.promote(name, nan, float("inf"), BENCH_A)

    other_benchmark = _add_version(registry, logged, name, 0.90, BENCH_B)
    assert not tracking.promote(name, other_benchmark, 0.90, BENCH_B)
    assert tracking.champion_info(name)["version"] == better
    assert _champion_versions(registry.client, name) == [better]


def test_nan_never_becomes_the_first_champion(registry: Registry, logged: Logged) -> None:
    name = "airrep-promotion-nan"
    version = _add_version(registry, logged, name, float("nan"), BENCH_A)
    assert not tracking.promote(name, version, float("nan"), BENCH_A)
    assert tracking.champion_info(name) is None


def test_logged_version_promotes_to_champion(registry: Registry, logged: Logged) -> None:
    assert tracking.promote(logged.name, logged.version.version, 0.25, BENCH_A, margin=0.0)
    version = registry.client.get_model_version(logged.name, logged.version.version)
    assert {tracking.CHAMPION, tracking.CHALLENGER} <= set(version.aliases)


def _spawn_pool(uri: str, workers: int) -> concurrent.futures.ProcessPoolExecutor:
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=mlflow.set_tracking_uri, initargs=(uri,))


def test_concurrent_promotions_in_two_processes(registry: Registry, logged: Logged) -> None:
    name = "airrep-promotion-processes"
    previous = _add_version(registry, logged, name, 0.20, BENCH_A)
    assert tracking.promote(name, previous, 0.20, BENCH_A)
    challengers = {_add_version(registry, logged, name, lds, BENCH_A): lds for lds in (0.50, 0.60)}
    with _spawn_pool(registry.uri, 2) as pool:
        futures = {v: pool.submit(tracking.promote, name, v, lds, BENCH_A, 0.0)
                   for v, lds in challengers.items()}
        results = {v: f.result(timeout=120) for v, f in futures.items()}
    best = max(challengers, key=challengers.get)
    assert results[best]
    assert _champion_versions(registry.client, name) == [best]
    champion = tracking.champion_info(name)
    assert champion["version"] == best
    assert float(champion["tags"]["lds"]) == max(challengers.values())
    assert champion["tags"]["benchmark_fingerprint"] == BENCH_A


def test_concurrent_promotions_in_threads(registry: Registry, logged: Logged) -> None:
    name = "airrep-promotion-threads"
    previous = _add_version(registry, logged, name, 0.20, BENCH_A)
    assert tracking.promote(name, previous, 0.20, BENCH_A)
    scores = [0.31, 0.45, 0.38, 0.52, 0.12, 0.49]
    challengers = {_add_version(registry, logged, name, lds, BENCH_A): lds for lds in scores}
    start = threading.Barrier(len(challengers))

    def promote(version: str) -> bool:
        start.wait()
        return tracking.promote(name, version, challengers[version], BENCH_A, 0.0)

    with concurrent.futures.ThreadPoolExecutor(len(challengers)) as pool:
        results = dict(zip(challengers, pool.map(promote, challengers), strict=True))
    best = max(challengers, key=challengers.get)
    assert results[best] and sum(results.values()) >= 1
    assert _champion_versions(registry.client, name) == [best]
    assert float(tracking.champion_info(name)["tags"]["lds"]) == max(scores)


def test_champion_pyfunc_finds_the_near_copy(registry: Registry) -> None:
    """The registered pyfunc, loaded by alias, ranks a text's near-copy first (packaged MiniLM),
    its scores those of ``AirRep.similarity``, the lexical channel's TF-IDF term included."""
    model_dir = registry.tmp / "minilm_airrep"
    airrep = AirRep.from_encoder("minilm", device="cpu", lexical=True)
    with torch.no_grad():
        airrep.model.lexical_weight.fill_(0.5)
    airrep.save_pretrained(model_dir)
    name = "airrep-serving"
    tags = tracking.standard_tags(registry.config, "llm-fp", "corpus-fp", BENCH_A, 0.3)
    with mlflow.start_run():
        version = tracking.log_attribution_model(model_dir, CORPUS_IDS, CORPUS_TEXTS, name, top_k=4,
                                                 tags=tags)
    assert tracking.promote(name, version.version, 0.3, BENCH_A)

    model = mlflow.pyfunc.load_model(f"models:/{name}@{tracking.CHAMPION}")
    targets = [7, 17, 29]
    near_copies = [CORPUS_TEXTS[7].replace("blue", "grey"), CORPUS_TEXTS[17].replace("slow", "sluggish"),
                   CORPUS_TEXTS[29].replace("cat", "dog")]
    hits = model.predict(pd.DataFrame({"text": near_copies}))
    assert list(hits.columns) == ["query", "rank", "train_id", "score", "text"]
    assert len(hits) == 4 * len(near_copies)
    for query, target in enumerate(targets):
        rows = hits[hits["query"] == query].sort_values("rank")
        assert rows["rank"].tolist() == [1, 2, 3, 4]
        assert rows["score"].is_monotonic_decreasing
        assert rows.iloc[0]["train_id"] == CORPUS_IDS[target]
        assert rows.iloc[0]["text"] == CORPUS_TEXTS[target]

    expected = airrep.similarity(near_copies, CORPUS_TEXTS)
    top = hits[hits["rank"] == 1].sort_values("query")["score"].to_numpy()
    np.testing.assert_allclose(top, expected.max(axis=1), rtol=1e-5)
    assert not np.allclose(expected, airrep.similarity(near_copies, CORPUS_TEXTS, lexical=False))

    two = model.predict(near_copies[:1], params={"top_k": 2})
    assert two["train_id"].tolist()[0] == CORPUS_IDS[7] and len(two) == 2


def test_pyfunc_loads_from_its_own_code(registry: Registry, logged: Logged, tmp_path: Path) -> None:
    """A fresh interpreter where ``airrep``/``infra`` are not importable loads the model from the
    copies logged with it (what ``mlflow models serve`` does in a new environment)."""
    script = tmp_path / "load.py"
    script.write_text(
        "import importlib.util, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "assert importlib.util.find_spec('airrep') is None and importlib.util.find_spec('infra') is None\n"
        "import mlflow\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "import airrep, infra.serving\n"
        "assert 'artifacts' in airrep.__file__ and 'artifacts' in infra.serving.__file__, airrep.__file__\n"
        "hits = model.predict(['How do I reverse a linked list in Python?'])\n"
        "print(len(hits), hits['train_id'].iloc[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=registry.uri, MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1")
    uri = f"models:/{logged.name}/{logged.version.version}"
    done = subprocess.run([sys.executable, str(script), uri], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    count, top = done.stdout.split()[-2:]
    assert int(count) == 5 and top in CORPUS_IDS


def test_log_training_needs_a_run(registry: Registry) -> None:
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        tracking.log_training(TrainingCurve(step=[1], loss=[math.pi], pair_accuracy=[0.5]))


def test_artifacts_and_model_on_s3(registry: Registry, s3_env: str) -> None:
    """With an S3 artifact store, run artifacts and the pyfunc go to ``<storage uri>/mlflow``
    (endpoint and credentials from the environment only) and load back from there."""
    config = registry.config.model_copy(deep=True)
    config.storage.uri = s3_env
    config.tracking.experiment = "airrep-s3"
    assert tracking.artifact_location(config) == f"{s3_env}/mlflow"
    table = LDSTable([MethodResult("airrep", 0.2, 32, 1.0)], noise_ceiling=None)
    name = "airrep-s3"
    try:
        tracking.ensure_experiment(config)
        with mlflow.start_run() as run:
            tracking.log_lds_table(table, table.save(registry.tmp / "evaluation-s3"))
            version = tracking.log_attribution_model(registry.tiny_model_dir, CORPUS_IDS[:10],
                                                     CORPUS_TEXTS[:10], name, top_k=3, tags={"lds": "0.2"})
    finally:
        tracking.ensure_experiment(registry.config)  # later tests log to the file store again
    bucket, prefix = s3_env[len("s3://"):].split("/", 1)
    keys = [o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/mlflow/") for o in page.get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/evaluation/lds_table.json") for k in keys)
    assert any(k.endswith("artifacts/corpus/corpus_embeddings.npy") for k in keys)
    hits = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}").predict(CORPUS_TEXTS[:2])
    assert len(hits) == 6 and set(hits["train_id"]) <= set(CORPUS_IDS[:10])


def test_the_experiment_opens_on_training_runs_in_mlflow_3s_ui(registry):
    """Untagged, MLflow 3's UI opens an experiment on its (empty) GenAI traces overview."""
    experiment = registry.client.get_experiment_by_name(registry.config.tracking.experiment)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
