"""The production profile's database: one PostgreSQL server, set up by the deployment's own
init script, holding MLflow's tracking store and registry, which accepts a promotion made
through ``infra.tracking`` (register, then the champion alias) as the sqlite store does.

Runs where PostgreSQL's server binaries are installed (``apt-get install postgresql``;
``make bench-orchestration`` installs them) and the ``postgres`` extra (psycopg2) is;
skipped elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.postgres import LocalPostgres, PostgresUnavailableError, find_bin_dir

pytest.importorskip("psycopg2", reason="the postgres extra (psycopg2-binary) is not installed")
pytestmark = pytest.mark.skipif(find_bin_dir() is None, reason="PostgreSQL's server binaries are not installed")

INIT_SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "deploy" / "postgres-init.sh"


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    try:
        server = LocalPostgres().start()
    except PostgresUnavailableError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def profile(postgres: LocalPostgres) -> LocalPostgres:
    """The cluster after the deployment's init script ran on it, as the postgres image runs it."""
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(postgres.port), "POSTGRES_USER": postgres.user,
           "PREFECT_DB_PASSWORD": "prefect-pw", "MLFLOW_DB_PASSWORD": "mlflow-pw"}
    env["PATH"] = f"{postgres.bin_dir}:{env['PATH']}"
    result = subprocess.run(["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return postgres


def test_init_script_creates_a_database_and_role_per_service(profile: LocalPostgres) -> None:
    postgres = profile
    owners = postgres.sql("SELECT datname || '=' || pg_get_userbyid(datdba) FROM pg_database "
                          "WHERE datname IN ('prefect', 'mlflow') ORDER BY datname")
    assert owners.splitlines() == ["mlflow=mlflow", "prefect=prefect"]
    # The roles have the passwords from the environment (stored hashed, never in clear).
    hashes = postgres.sql("SELECT rolname || ':' || left(rolpassword, 14) FROM pg_authid "
                          "WHERE rolname IN ('prefect', 'mlflow') ORDER BY rolname")
    assert hashes.splitlines() == ["mlflow:SCRAM-SHA-256$", "prefect:SCRAM-SHA-256$"]


def test_registry_on_postgres_accepts_a_promotion(profile: LocalPostgres, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow import MlflowClient
    from transformers import AutoTokenizer, BertConfig

    from airrep.config import load_config
    from airrep.model import AirRep, AirRepConfig, AirRepModel, resolve_encoder
    from infra import tracking

    postgres = profile
    monkeypatch.setattr(tracking, "_git_commit", lambda: None)
    # As the service's own role; the driver named, as in compose.yaml.
    uri = postgres.url("mlflow", "postgresql+psycopg2").replace(f"{postgres.user}@", "mlflow@")
    config = load_config(overrides=[f"work_dir={tmp_path / 'work'}", f"tracking.uri={uri}",
                                    f"tracking.artifact_location={(tmp_path / 'artifacts').as_uri()}"], environ={})
    previous_uri = mlflow.get_tracking_uri()
    try:
        tracking.ensure_experiment(config)
        encoder = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             vocab_size=30522)
        model = AirRep(AirRepModel(AirRepConfig(encoder=encoder.to_dict())),
                       AutoTokenizer.from_pretrained(resolve_encoder("minilm")), device="cpu")
        model.save_pretrained(tmp_path / "airrep")
        name = "airrep-postgres"
        with mlflow.start_run():
            version = tracking.log_attribution_model(tmp_path / "airrep", ["a_0", "b_0"], ["first text", "second"],
                                                     name, top_k=1, tags={"lds": "0.2"})
        assert tracking.promote(name, version.version, 0.2, "bench")
        assert tracking.champion_info(name)["version"] == str(version.version)

        # Concurrent promotions: the alias row is created by read-then-insert, so on PostgreSQL
        # writers collide on its unique key; promote retries and one version ends champion.
        client = MlflowClient()
        challengers = {str(client.create_model_version(name, version.source).version): lds
                       for lds in (0.41, 0.47, 0.35, 0.44)}
        start = threading.Barrier(len(challengers))

        def promote(version: str) -> bool:
            start.wait()
            return tracking.promote(name, version, challengers[version], "bench")

        with concurrent.futures.ThreadPoolExecutor(len(challengers)) as pool:
            results = dict(zip(challengers, pool.map(promote, challengers), strict=True))
        best = max(challengers, key=challengers.get)
        assert results[best]
        champions = [str(v.version) for v in client.search_model_versions(f"name = '{name}'")
                     if tracking.CHAMPION in client.get_model_version(name, v.version).aliases]
        assert champions == [best]
        assert postgres.sql("SELECT count(*) FROM registered_model_aliases WHERE alias = 'champion'",
                            "mlflow") == "1"
    finally:
        mlflow.set_tracking_uri(previous_uri)
