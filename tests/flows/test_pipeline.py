"""The whole pipeline through Prefect, on S3 and MLflow, then served from the registry."""

from __future__ import annotations

import json
import math

import boto3
import mlflow
import pandas as pd
import pytest

from airrep.config import load_config
from airrep.data import format_example
from airrep.sampling import SubsetIndex
from flows.cli import main
from flows.pipeline import pipeline
from infra import tracking
from infra.storage import open_store
from tasks.common import records_by_id

pytestmark = pytest.mark.slow  # end to end: scheduled first (conftest)


def test_pipeline_end_to_end_resumes_and_serves(micro_overrides, full_evaluation, capsys, tmp_path):
    micro_overrides = micro_overrides + full_evaluation
    first = pipeline(load_config("configs/tiny.yaml", micro_overrides))
    config = load_config("configs/tiny.yaml", micro_overrides)
    name = tracking.registered_model_name(config)

    # Every fine-tune ran once: 2 splits x 4 subsets + 4 benchmark subsets x 2 seeds.
    assert first["finetunes_computed"] == 16 and first["finetunes_skipped"] == 0
    rows = {r["method"]: r for r in first["evaluation"]["table"]["rows"]}
    assert set(rows) == {"airrep", "airrep-sum", "airrep-dense", "airrep-lexical", "encoder", "encoder-sum", "tfidf",
                         "tfidf-sum", "logra-sum"}
    # AirRep keeps its 384-d embedding and, for its lexical channel, the pool's TF-IDF vector of
    # each field (prompt, response): every word of the whole-text vocabulary is in one of them.
    assert rows["logra-sum"]["dim"] > 0 and rows["airrep-dense"]["dim"] == 384
    assert rows["airrep"]["dim"] == 384 + rows["airrep-lexical"]["dim"]
    assert rows["airrep-lexical"]["dim"] >= rows["tfidf"]["dim"]
    assert all(math.isfinite(r["lds"]) and -1 <= r["lds"] <= 1 for r in rows.values())
    assert first["evaluation"]["table"]["noise_ceiling"] is not None
    assert first["registry"]["promoted"] and first["registry"]["champion"] == first["registry"]["version"]

    # Artifacts are on the S3 server (over HTTP), published with completion markers.
    bucket = config.storage.uri.split("/")[2]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert any("/finetunes/" in k for k in keys) and any(k.endswith(".complete.json") for k in keys)
    assert any("/mlflow/" in k for k in keys), "MLflow's artifact root is on S3 too"

    # A second run redoes nothing: every fine-tune and the training are skipped.
    second = pipeline(load_config("configs/tiny.yaml", micro_overrides))
    assert second["finetunes_computed"] == 0 and second["finetunes_skipped"] == 16
    assert second["model"]["skipped"]
    assert second["registry"]["skipped"] and second["registry"]["version"] == first["registry"]["version"]

    # Serving: the champion pyfunc answers top-k queries; a near-copy finds its original.
    tracking.ensure_experiment(config)
    champion = tracking.champion_info(name)
    assert champion["tags"]["base_llm_fingerprint"] == first["llm"]["fingerprint"]
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    by_id = records_by_id(config)
    index = SubsetIndex.from_json(open_store(config.storage.uri).get_bytes(first["index_key"]).decode())
    target = by_id[index.benchmark.pool[3]]
    words = target.response.split()
    near_copy = format_example(target.prompt, " ".join(words[:-1] + ["indeed"]))
    hits = served.predict(pd.DataFrame({"text": [near_copy]}), params={"top_k": 5})
    assert len(hits) == 5
    assert hits.iloc[0]["train_id"] == target.id

    # The same query through the command line, from the champion alias.
    args = ["attribute", "-c", "configs/tiny.yaml", near_copy, "-k", "3", "--json"]
    for override in micro_overrides:
        args[3:3] = ["--set", override]
    assert main(args) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [p["rank"] for p in printed] == [1, 2, 3] and printed[0]["train_id"] == target.id
    # ... and as a prompt and a response, which the command line formats as training examples are.
    args = ["attribute", "-c", "configs/tiny.yaml", "--prompt", target.prompt, "--response",
            " ".join(words[:-1] + ["indeed"]), "-k", "1", "--json"]
    for override in micro_overrides:
        args[1:1] = ["--set", override]
    assert main(args) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [p["train_id"] for p in printed] == [target.id]

    # Selection from the champion: a near-copy of a pool example as the target picks it first.
    targets, candidates, out = tmp_path / "targets.jsonl", tmp_path / "candidates.jsonl", tmp_path / "chosen.jsonl"
    targets.write_text(json.dumps({"id": "t", "prompt": target.prompt, "response": " ".join(words[:-1] + ["indeed"])}))
    candidates.write_text("".join(json.dumps({"id": r.id, "prompt": r.prompt, "response": r.response}) + "\n"
                                  for r in (by_id[i] for i in index.benchmark.pool)))
    args = ["select", "-c", "configs/tiny.yaml", "--targets", str(targets), "--candidates", str(candidates),
            "--budget", "4", "-o", str(out)]
    for override in micro_overrides:
        args[1:1] = ["--set", override]
    assert main(args) == 0
    chosen = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(chosen) == 4 and chosen[0]["id"] == target.id
