"""The registry under concurrent and broken challengers, through the pipeline's own task:
a NaN-LDS or worse challenger never becomes champion, and two promotions running at the same
time leave exactly one champion, the better model, with tags that agree with its run."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from airrep.config import load_config
from flows.common import config_data
from flows.label_generation import label_generation
from flows.pipeline import pipeline
from infra import tracking
from tasks.model import register_and_promote, train_airrep_task

pytestmark = pytest.mark.slow  # end to end: scheduled first (conftest)


def _champions(client: MlflowClient, name: str) -> list[str]:
    return [str(v.version) for v in client.search_model_versions(f"name = '{name}'")
            if tracking.CHAMPION in client.get_model_version(name, v.version).aliases]


def test_nan_and_concurrent_challengers(micro_overrides):
    first = pipeline(load_config("configs/tiny.yaml", micro_overrides))
    labels = label_generation(load_config("configs/tiny.yaml", micro_overrides))  # all published: nothing re-runs
    assert labels["computed"] == 0
    config = load_config("configs/tiny.yaml", micro_overrides)
    name = tracking.registered_model_name(config)
    champion_lds = first["evaluation"]["lds"]
    bench_fp = first["benchmark_fingerprint"]

    def challenger(steps: int, lds: float) -> tuple[dict, dict, dict]:
        """A genuinely different model (trained for ``steps``) with the given benchmark LDS."""
        cfg = config_data(load_config("configs/tiny.yaml", micro_overrides + [f"train.steps={steps}"]))
        model = train_airrep_task(cfg, first["index_key"], labels["label_keys"])
        evaluation = {**first["evaluation"], "lds": lds, "champion_lds": None}
        return cfg, model, evaluation

    def register(cfg, model, evaluation):
        return register_and_promote.submit(cfg, first["index_key"], first["llm"], model["key"], model["curve"],
                                           evaluation, labels["index"]["corpus_fingerprint"], bench_fp)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def promote_concurrently(challengers):
        return [f.result() for f in [register(*c) for c in challengers]]

    nan = promote_concurrently([challenger(1, float("nan"))])[0]
    assert not nan["promoted"] and nan["champion"] == first["registry"]["version"]

    better, best = challenger(2, champion_lds + 0.1), challenger(4, champion_lds + 0.2)
    results = promote_concurrently([better, best])
    client = MlflowClient()
    champions = _champions(client, name)
    assert len(champions) == 1
    best_version = results[1]["version"]
    assert champions == [best_version]
    tags = client.get_model_version(name, best_version).tags
    assert math.isclose(float(tags["lds"]), champion_lds + 0.2)
    assert tags["benchmark_fingerprint"] == bench_fp and tags["model_key"] == best[1]["key"]
    run_tags = client.get_run(client.get_model_version(name, best_version).run_id).data.tags
    assert run_tags["model_key"] == best[1]["key"]
    print(f"registry: NaN challenger v{nan['version']} stayed challenger; concurrent v{results[0]['version']} "
          f"and v{best_version}: champion v{best_version}")
