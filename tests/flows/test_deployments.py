"""prefect.yaml on a real Prefect server: deploy every deployment, see the schedules create
runs and the retrain trigger become an automation, then emit the base-LLM event from the
watch and have a process worker run the pipeline run the automation created."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.prefect_server import PREFECT
from infra.prefect_server import prefect_server as start_prefect_server

pytestmark = pytest.mark.slow  # end to end: scheduled first (conftest)

REPO = Path(__file__).resolve().parents[2]


def _api(base: str, path: str, body: dict | None = None) -> object:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A real ``prefect server`` and the environment its CLI commands and workers run with."""
    with start_prefect_server(tmp_path / "prefect-home", tmp_path / "server.log") as server:
        yield server.api, server.env | {"AIRREP_PROJECT_DIR": str(REPO)}


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    """Run a Prefect CLI command; return its stdout and stderr together (a worker streams its
    flow runs' output there, which is what explains a crashed run)."""
    result = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def test_deploy_schedule_trigger_and_worker_run(prefect_server, micro, tmp_path):
    api, env = prefect_server
    for pool in ("cpu", "gpu"):
        _run([PREFECT, "work-pool", "create", pool, "--type", "process"], env)
    _run([PREFECT, "--no-prompt", "deploy", "--all"], env)

    deployments = {d["name"]: d for d in _api(api, "/deployments/filter", {})}
    assert set(deployments) == {"pipeline", "label-generation", "train-evaluate-promote", "watch-base-llm"}
    assert deployments["watch-base-llm"]["work_pool_name"] == "cpu"
    assert deployments["pipeline"]["work_pool_name"] == "gpu"
    assert deployments["pipeline"]["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    # One retrain at a time: a run started while another runs waits for it.
    assert deployments["pipeline"]["global_concurrency_limit"]["limit"] == 1
    assert deployments["pipeline"]["concurrency_options"]["collision_strategy"] == "ENQUEUE"

    # The cron schedules produce scheduled runs (the scheduler service fills them in).
    deadline = time.monotonic() + 90
    scheduled: set[str] = set()
    while time.monotonic() < deadline and scheduled != {"pipeline", "watch-base-llm"}:
        runs = _api(api, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
        by_id = {d["id"]: name for name, d in deployments.items()}
        scheduled = {by_id[r["deployment_id"]] for r in runs if r["deployment_id"] in by_id}
        time.sleep(2)
    assert scheduled == {"pipeline", "watch-base-llm"}

    # The retrain trigger on airrep.base-llm.changed became an automation for the pipeline.
    automations = _api(api, "/automations/filter", {})
    assert any("airrep.base-llm.changed" in json.dumps(a["trigger"]) for a in automations)

    # Pause the schedules (which deletes their scheduled runs) before a worker starts: a cron
    # run falling due now (the pipeline's is Mondays 03:00 UTC) would be picked up instead.
    for deployment in deployments.values():
        _api(api, f"/deployments/{deployment['id']}/pause_deployment", {})

    # The retrain path, end to end: `airrep watch --trigger event` (what the watch-base-llm
    # deployment runs) finds a base LLM no model was evaluated on and emits
    # airrep.base-llm.changed with its whole config; the automation creates a pipeline run with
    # that config (its overrides included), and a process worker executes it.
    overrides = micro + [f"work_dir={tmp_path / 'work'}", f"storage.uri={tmp_path / 'artifacts'}", "name=from-event"]
    watch = [sys.executable, "-m", "flows.cli", "watch", "-c", "configs/tiny.yaml", "--trigger", "event"]
    for override in overrides:
        watch += ["--set", override]
    _run(watch, env)
    pipeline_id = deployments["pipeline"]["id"]
    deadline = time.monotonic() + 120
    runs: list = []
    while time.monotonic() < deadline and not runs:
        runs = _api(api, "/flow_runs/filter", {"deployments": {"id": {"any_": [pipeline_id]}}})
        time.sleep(1)
    assert len(runs) == 1, f"the event should start exactly one pipeline run, got {len(runs)}"
    run_id = runs[0]["id"]
    assert runs[0]["parameters"]["config"]["name"] == "from-event", "the event carries the watch run's overrides"
    assert runs[0]["parameters"]["config"]["work_dir"] == str(tmp_path / "work")
    worker_out = _run([PREFECT, "worker", "start", "--pool", "gpu", "--run-once", "--type", "process"], env,
                      timeout=900)
    state = _api(api, f"/flow_runs/{run_id}")["state"]
    if state["type"] != "COMPLETED":
        logs = _api(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"})
        run_log = "\n".join(f"{entry['level']:>2} {entry['message']}" for entry in logs)
        pytest.fail(f"flow run ended {state['type']}: {state.get('message')}\n"
                    f"--- flow run log (tail) ---\n{run_log[-6000:]}\n"
                    f"--- worker output (tail) ---\n{worker_out[-4000:]}")
    assert list((tmp_path / "work" / "from-event" / "evaluation").glob("*/lds.png"))
