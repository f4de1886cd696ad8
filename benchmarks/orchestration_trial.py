"""One database's trial of the orchestration benchmark (``benchmarks/orchestration.py`` starts
the API server and the database, then runs this in a process of its own).

    python -m benchmarks.orchestration_trial --tasks N --workers W --work DIR --out trial.json

Runs the real ``label_generation`` flow twice against ``$PREFECT_API_URL``: sampling, the
base LLM, the fan-out of N fine-tunes over a Dask cluster (``orchestration.runner: dask``,
the runner a GPU cluster uses) and the label normalisation. Only the fine-tune itself is
replaced, inside the Dask workers, by :mod:`benchmarks.fixed_finetune`. The second run finds
every result published. Then it checks, from the store, the stand-in's call log and the
API, that nothing was lost or done twice, and writes what it measured as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from flows.cli import prepare_environment

log = logging.getLogger("benchmarks.orchestration")
STALL_SECONDS = 180


def bench_overrides(n_tasks: int, work: Path, dask_address: str | None) -> list[str]:
    """configs/tiny.yaml resized: ``n_tasks`` subsets of 10 (in up to 10 splits, as the paper's
    plan lays out many subsets per split), small dev sets and a micro base LM (built once, in
    seconds); the project's default retries; the fan-out on the given Dask cluster, if any."""
    n_splits = max(1, min(10, n_tasks // 100))
    return [
        f"sampling.n_splits={n_splits}", f"sampling.n_subsets={max(2, n_tasks // n_splits)}",
        "sampling.n_dev=20", "sampling.n_pool=200", "sampling.subset_size=10", "sampling.pretrain_size=400",
        "sampling.benchmark.n_test=20", "sampling.benchmark.n_pool=60", "sampling.benchmark.n_subsets=4",
        "sampling.benchmark.subset_size=20",
        "base_llm.tiny.vocab_size=2000", "base_llm.tiny.hidden_size=64", "base_llm.tiny.intermediate_size=256",
        "base_llm.tiny.num_heads=2", "base_llm.tiny.epochs=1", "finetune.max_length=128",
        f"work_dir={work}", f"storage.uri={work / 'artifacts'}",
    ] + (["orchestration.runner=dask", f"orchestration.dask_address={dask_address}"] if dask_address else [])


def timed_run(flow, config) -> dict[str, Any]:
    """The flow's result (or the error it failed with), its flow run id and its wall time."""
    start = time.perf_counter()
    state = flow(config, return_state=True)
    run = {"seconds": time.perf_counter() - start, "id": str(state.state_details.flow_run_id)}
    try:
        run["result"] = state.result()
    except Exception as exc:  # a failed run is measured, and the resume must repair it
        log.exception("flow run %s failed", run["id"])
        run["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return run


def fanout_runs(client, parent_id: str, n_tasks: int, settle_seconds: float) -> dict[str, Any]:
    """The fan-out subflow run of ``parent_id`` and its task runs as the API recorded them.

    Task runs reach the API as events that the server writes in the background, so this
    waits (up to ``settle_seconds``) until all ``n_tasks`` are there in a final state, and
    reports how long that took after the flow returned."""
    from prefect.client.schemas.filters import FlowFilter, FlowRunFilter

    fanout = client.read_flow_runs(flow_filter=FlowFilter(name={"any_": ["finetune-subsets"]}),
                                   flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [parent_id]}))
    if len(fanout) != 1:
        return {"fanout_error": f"{len(fanout)} fan-out flow runs under {parent_id}"}
    run = fanout[0]
    start = progress_at = time.perf_counter()
    recorded = -1
    while True:
        task_runs = read_all_task_runs(client, str(run.id))
        final = [t for t in task_runs if t.state_type is not None and t.state_type.value in
                 ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
        if len(final) > recorded:
            recorded, progress_at = len(final), time.perf_counter()
        # Done when all are final, or when none has become final for STALL_SECONDS: those the
        # server never records in a final state are reported, not waited for.
        if (len(final) >= n_tasks or time.perf_counter() - start > settle_seconds
                or time.perf_counter() - progress_at > STALL_SECONDS):
            break
        time.sleep(10)  # reading every task run loads the very server that is catching up
    states = Counter(t.state_type.value if t.state_type else "NONE" for t in task_runs)
    names = Counter(t.name for t in task_runs)
    in_slot = sorted((t.end_time - t.start_time).total_seconds() for t in task_runs if t.start_time and t.end_time)
    return {
        "flow_run_state": run.state_type.value if run.state_type else None,
        "wall_seconds": (run.end_time - run.start_time).total_seconds() if run.start_time and run.end_time else None,
        "task_runs": len(task_runs), "task_run_states": dict(states),
        "task_runs_retried": sum(1 for t in task_runs if (t.run_count or 0) > 1),
        "task_run_names_repeated": sum(1 for c in names.values() if c > 1),
        "settle_seconds": round(progress_at - start, 2),
        "task_runs_not_final": n_tasks - len(final),
        "task_run_seconds": {"median": percentile(in_slot, 50), "p95": percentile(in_slot, 95),
                             "max": in_slot[-1] if in_slot else None},
    }


def read_all_task_runs(client, flow_run_id: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.client.schemas.sorting import TaskRunSort

    runs, page = [], 200  # the API's largest page
    while True:
        batch = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}),
                                      sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=page, offset=len(runs))
        runs.extend(batch)
        if len(batch) < page:
            return runs


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1)], 4)


def published_state(root: Path, keys: list[str]) -> dict[str, tuple[int, int, int, int] | None]:
    """Per key, the inode and modification time of its payload and its completion marker: a
    second publish of a key replaces both files, so changes nothing only if nothing was redone."""
    from airrep.keys import MARKER_SUFFIX

    state = {}
    for key in keys:
        try:
            payload, marker = (root / key).stat(), (root / (key + MARKER_SUFFIX)).stat()
            state[key] = (payload.st_ino, payload.st_mtime_ns, marker.st_ino, marker.st_mtime_ns)
        except FileNotFoundError:
            state[key] = None
    return state


def check_results(config, jobs, calls_first: list[int], calls_second: list[int], first: dict, second: dict,
                  before: dict, after: dict) -> dict[str, Any]:
    """Lost and duplicated results, counted from the store and the stand-in's call log."""
    from benchmarks.fixed_finetune import expected_losses
    from tasks.common import store_for, typed
    from tasks.labels import npy_load

    store = store_for(typed(config))
    seeds = Counter(calls_first + calls_second)
    wrong = sum(1 for job in jobs if after[job.key] is not None and not (
        npy_load(store.get_bytes(job.key)) == expected_losses(job.seed, len(job.eval_ids))).all())
    first_result, second_result = first.get("result") or {}, second.get("result") or {}
    checks = {
        "jobs": len(jobs),
        "distinct_keys": len({job.key for job in jobs}),
        "lost": sum(1 for job in jobs if after[job.key] is None),
        "wrong_content": wrong,
        "fine_tunes_run_first": len(calls_first),
        "fine_tunes_run_more_than_once": sum(1 for job in jobs if seeds[job.seed] > 1),
        "fine_tunes_never_run": sum(1 for job in jobs if seeds[job.seed] == 0),
        "fine_tunes_run_on_resume": len(calls_second),
        "republished_on_resume": sum(1 for key, value in after.items()
                                     if before[key] is not None and value != before[key]),
        "first_computed": first_result.get("computed"), "first_skipped": first_result.get("skipped"),
        "resume_computed": second_result.get("computed"), "resume_skipped": second_result.get("skipped"),
        "label_splits": len(second_result.get("label_keys", [])),
    }
    checks["ok"] = ("error" not in first and "error" not in second and checks["distinct_keys"] == len(jobs)
                    and checks["lost"] == 0 and wrong == 0 and checks["fine_tunes_run_first"] == len(jobs)
                    and checks["fine_tunes_run_more_than_once"] == 0 and checks["fine_tunes_never_run"] == 0
                    and checks["fine_tunes_run_on_resume"] == 0 and checks["republished_on_resume"] == 0
                    and checks["first_computed"] == len(jobs) and checks["resume_skipped"] == len(jobs)
                    and checks["resume_computed"] == 0)
    return checks


def planned_jobs(config: dict[str, Any], run: dict[str, Any]) -> list:
    """The fan-out's jobs, from the plan (:func:`airrep.plan.stage_jobs`) of the run's index."""
    from tasks.labels import subset_jobs

    return subset_jobs(config, run["result"]["index"]["key"], run["result"]["llm"]["fingerprint"], "labels")


def thread_pool_fanout(workers: int) -> None:
    """Run this process's fan-outs on Prefect's ``ThreadPoolTaskRunner`` with ``workers``
    threads, in place of the configured runner (see the module docstring of
    :mod:`benchmarks.orchestration` for why), and the fine-tune as the stand-in."""
    from prefect.task_runners import ThreadPoolTaskRunner

    import flows.label_generation
    from benchmarks.fixed_finetune import install

    install()
    flows.label_generation.task_runner = lambda orchestration: ThreadPoolTaskRunner(max_workers=workers)


def warm_worker(config: dict[str, Any]) -> None:
    """Load the corpus in a Dask worker before the fan-out: every thread of a fresh worker
    process would otherwise parse it at once (once per process; not orchestration)."""
    from tasks.common import records_by_id, typed

    records_by_id(typed(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True, help="concurrent fine-tunes (threads)")
    parser.add_argument("--runner", choices=("threads", "dask"), required=True)
    parser.add_argument("--processes", type=int, default=2, help="Dask worker processes sharing the threads")
    parser.add_argument("--seconds", type=float, required=True, help="the stand-in fine-tune's duration")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    prepare_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from distributed import Client, LocalCluster
    from prefect.client.orchestration import get_client

    from airrep.config import load_config
    from benchmarks.fixed_finetune import CALLS_ENV, SECONDS_ENV, read_calls
    from flows.label_generation import label_generation

    calls = args.work / "finetune-calls.log"
    os.environ.update({SECONDS_ENV: str(args.seconds), CALLS_ENV: str(calls)})
    with ExitStack() as stack:
        if args.runner == "dask":
            threads = math.ceil(args.workers / args.processes)
            env = {SECONDS_ENV: str(args.seconds), CALLS_ENV: str(calls),
                   "PREFECT_API_URL": os.environ["PREFECT_API_URL"]}
            cluster = stack.enter_context(LocalCluster(
                n_workers=args.processes, threads_per_worker=threads, processes=True, dashboard_address=None,
                preload=["benchmarks.fixed_finetune"], env=env))
            address, slots = cluster.scheduler_address, threads * args.processes
        else:
            thread_pool_fanout(args.workers)
            address, slots = None, args.workers
        config = load_config("configs/tiny.yaml", bench_overrides(args.tasks, args.work, address))
        if args.runner == "dask":
            with Client(address) as client:
                client.run(warm_worker, config.model_dump(mode="json"))
        first = timed_run(label_generation, config)
        calls_first = read_calls(calls)
        root = Path(config.storage.uri)
        data = config.model_dump(mode="json")
        jobs = planned_jobs(data, first) if "result" in first else []
        before = published_state(root, [job.key for job in jobs])
        second = timed_run(label_generation, config)
        calls_second = read_calls(calls)[len(calls_first):]
        if not jobs and "result" in second:
            jobs = planned_jobs(data, second)
            before = {job.key: None for job in jobs}
        after = published_state(root, [job.key for job in jobs])
    checks = check_results(data, jobs, calls_first, calls_second, first, second, before, after)
    with get_client(sync_client=True) as client:
        first_fanout = fanout_runs(client, first["id"], len(jobs), settle_seconds=1800)
        second_fanout = fanout_runs(client, second["id"], len(jobs), settle_seconds=1800)
    result = {"tasks": len(jobs), "workers": slots, "runner": args.runner, "finetune_seconds": args.seconds,
              "first": {"flow_seconds": round(first["seconds"], 2), "error": first.get("error"), **first_fanout},
              "resume": {"flow_seconds": round(second["seconds"], 2), "error": second.get("error"), **second_fanout},
              "checks": checks}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("trial: %s", json.dumps(result))


if __name__ == "__main__":
    main()
