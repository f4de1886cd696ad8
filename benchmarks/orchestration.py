"""Orchestration load test: paper-scale fan-outs through the real label-generation flow, on a
Prefect API server backed by sqlite and then by PostgreSQL.

    python -m benchmarks.orchestration [--tasks 10000] [--workers 50] [--databases sqlite,postgres]

For each database this starts its own ``prefect server start`` (127.0.0.1, a fresh
PREFECT_HOME; for PostgreSQL a fresh cluster from :mod:`infra.postgres` and
``PREFECT_API_DATABASE_CONNECTION_URL``), runs :mod:`benchmarks.orchestration_trial` (the
flow twice: the fan-out, then a resume that must skip everything) and meanwhile samples the
server's memory. The fine-tune is the one thing replaced: a task body of fixed duration
(:mod:`benchmarks.fixed_finetune`), so the time beyond it is the orchestration's.

Overhead per task: the fan-out's wall time beyond the ideal ``ceil(N / W) · d`` for N
fine-tunes of d seconds on W concurrent slots, times W, over N: how much longer than its
fine-tune each task holds a slot (``(T·W − N·d) / N`` when W divides N).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from infra.postgres import LocalPostgres
from infra.prefect_server import prefect_server

log = logging.getLogger("benchmarks.orchestration")
REPO = Path(__file__).resolve().parents[1]
# What the client side (the flow, Dask workers) logs when an API call fails or is retried,
# and what the server logs for an error or a request it failed.
# A response line counts if the server failed the request (5xx) or throttled it (429); the
# client's 4xx answers are part of normal operation (a 422 to its CSRF-token probe).
CLIENT_HTTP_ERRORS = re.compile(r"\"HTTP/1\.1 (5\d\d|429) |HTTPStatusError|retryable status code"
                                r"|httpx\.\w*(Error|Timeout)|ConnectError|ReadTimeout|RemoteProtocolError"
                                r"|WebSocket\w*(Error|Closed)")
SERVER_ERRORS = re.compile(r"\bERROR\b|Traceback|\" [5]\d\d\b|database is locked")


class MemorySampler(threading.Thread):
    """Peak resident memory of a process tree (the process and all its children), sampled."""

    def __init__(self, pids: Any, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval, self.peak_bytes = pids, interval, 0
        self.cpu_seconds: dict[int, float] = {}  # per process of the tree, its latest user + system time
        self._stop_event = threading.Event()

    def tree_rss(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                root = psutil.Process(pid)
                for process in [root, *root.children(recursive=True)]:
                    with process.oneshot():
                        total += process.memory_info().rss
                        times = process.cpu_times()
                    self.cpu_seconds[process.pid] = times.user + times.system
            except psutil.Error:
                continue
        return total

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_bytes = max(self.peak_bytes, self.tree_rss())
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_bytes


def last_error(log_path: Path) -> str:
    """The last exception line of a log (``SomeError: message``), shortened."""
    errors = [line for line in log_path.read_text(errors="replace").splitlines()
              if re.match(r"^[\w.]+(Error|Exception|Unavailable)\b.*:", line)]
    return errors[-1][:300] if errors else "no exception in the log"


def count_lines(path: Path, pattern: re.Pattern) -> int:
    with open(path, errors="replace") as handle:
        return sum(1 for line in handle if pattern.search(line))


def sqlite_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("prefect.db*"))


def run_database(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One trial on one database: its server, the flow twice, what it cost."""
    folder.mkdir(parents=True)
    home, work = folder / "prefect-home", folder / "work"
    home.mkdir()
    work.mkdir()
    postgres = LocalPostgres().start() if name == "postgres" else None
    try:
        url = None
        if postgres:
            postgres.create_database("prefect")
            url = postgres.url("prefect", "postgresql+asyncpg")
        server_log, trial_log, trial_out = folder / "server.log", folder / "trial.log", folder / "trial.json"
        with prefect_server(home, server_log, database_url=url) as server:
            log.info("%s: prefect server on %s up after %.1f s", name, server.api, server.start_seconds)
            server_memory = MemorySampler(lambda: [server.process.pid])
            database_memory = MemorySampler(postgres.server_pids if postgres else list)
            server_memory.start()
            database_memory.start()
            env = server.env | {"PREFECT_HOME": str(folder / "client-home")}
            command = [sys.executable, "-m", "benchmarks.orchestration_trial", "--tasks", str(args.tasks),
                       "--workers", str(args.workers), "--runner", args.runner, "--processes", str(args.processes),
                       "--seconds", str(args.seconds), "--work", str(work), "--out", str(trial_out)]
            start, children_before, load_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN), \
                os.getloadavg()[0]
            with open(trial_log, "wb") as out:
                trial = subprocess.run(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                       timeout=args.timeout)
            trial_seconds = time.perf_counter() - start
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            trial_cpu = (children.ru_utime - children_before.ru_utime) + (children.ru_stime - children_before.ru_stime)
            load_after = os.getloadavg()[0]
            server_peak, database_peak = server_memory.stop(), database_memory.stop()
        if trial.returncode == 0 and trial_out.exists():
            result = json.loads(trial_out.read_text())
        else:  # the flow failed: what it died of is a result too
            log.error("%s trial exited with %d; its log: %s", name, trial.returncode, trial_log)
            result = {"tasks": args.tasks, "workers": args.workers, "runner": args.runner,
                      "finetune_seconds": args.seconds, "error": last_error(trial_log),
                      "checks": {"ok": False}}
        database_bytes = postgres.database_bytes("prefect") if postgres else sqlite_bytes(home)
    finally:
        if postgres:
            postgres.stop()
    return {"database": name, **result, "trial_process_seconds": round(trial_seconds, 1),
            "cpu_seconds": {"flow_process": round(trial_cpu, 1),
                            "api_server": round(sum(server_memory.cpu_seconds.values()), 1),
                            "postgres": round(sum(database_memory.cpu_seconds.values()), 1) if postgres else None},
            "load_average": [round(load_before, 1), round(load_after, 1)],
            "server_rss_peak_mb": round(server_peak / 2**20, 1),
            "database_rss_peak_mb": round(database_peak / 2**20, 1) if postgres else None,
            "database_mb": round(database_bytes / 2**20, 1),
            "client_http_errors_logged": count_lines(trial_log, CLIENT_HTTP_ERRORS),
            "server_errors_logged": count_lines(server_log, SERVER_ERRORS),
            **overhead(result)}


def overhead(result: dict[str, Any]) -> dict[str, Any]:
    """The fan-out's wall time beyond its ideal, per task, and as a share of one fine-tune."""
    n, workers, seconds = result["tasks"], result["workers"], result["finetune_seconds"]
    wall = result.get("first", {}).get("wall_seconds")
    if not wall or result["first"].get("error"):
        return {"overhead_per_task_seconds": None, "overhead_percent": None}
    ideal = -(-n // workers) * seconds
    per_task = (wall - ideal) * workers / n
    states = result["first"].get("task_run_states", {})
    return {"ideal_fanout_seconds": ideal, "fanout_seconds": round(wall, 2),
            "overhead_per_task_seconds": round(per_task, 4), "overhead_percent": round(100 * per_task / seconds, 2),
            "failed_or_crashed_task_runs": sum(states.get(s, 0) for s in ("FAILED", "CRASHED"))
            + sum(result["resume"].get("task_run_states", {}).get(s, 0) for s in ("FAILED", "CRASHED")),
            "resume_seconds": result["resume"]["flow_seconds"]}


def markdown(results: dict[str, Any]) -> str:
    """The results as the section of benchmarks/ORCHESTRATION.md below its fixed text."""
    rows = [("fan-out wall time, s (ideal)", lambda r: f"{r['fanout_seconds']} ({r['ideal_fanout_seconds']:g})"),
            ("overhead per task, s", lambda r: f"{r['overhead_per_task_seconds']:.3f}"),
            ("overhead, % of the fine-tune", lambda r: f"{r['overhead_percent']:.1f}"),
            ("task run time in the API, median / p95, s",
             lambda r: f"{r['first']['task_run_seconds']['median']} / {r['first']['task_run_seconds']['p95']}"),
            ("failed or crashed task runs", lambda r: str(r["failed_or_crashed_task_runs"])),
            ("task runs recorded by the API (first, resume)", lambda r: _both(r, "task_runs")),
            ("task runs never recorded in a final state (first, resume)", lambda r: _both(r, "task_runs_not_final")),
            ("last task run recorded final, s after the flow returned", lambda r: str(r["first"]["settle_seconds"])),
            ("HTTP errors logged: client / server", lambda r: f"{r['client_http_errors_logged']} / "
                                                             f"{r['server_errors_logged']}"),
            ("server RSS peak, MB", lambda r: f"{r['server_rss_peak_mb']:.0f}"),
            ("PostgreSQL RSS peak, MB (shared buffers counted per process)",
             lambda r: "-" if r["database_rss_peak_mb"] is None else f"{r['database_rss_peak_mb']:.0f}"),
            ("database size, MB", lambda r: f"{r['database_mb']:.1f}"),
            ("resume: whole flow, s (its fan-out)", lambda r: f"{r['resume']['flow_seconds']} "
                                                              f"({r['resume']['wall_seconds']:.1f})"),
            ("results lost / wrong / run twice", lambda r: f"{r['checks']['lost']} / {r['checks']['wrong_content']}"
                                                           f" / {r['checks']['fine_tunes_run_more_than_once']}"),
            ("resume: fine-tunes rerun / results republished",
             lambda r: f"{r['checks']['fine_tunes_run_on_resume']} / {r['checks']['republished_on_resume']}"),
            ("checks pass", lambda r: "yes" if r["checks"]["ok"] else "**no**")]
    runs = results["runs"]
    head = f"| {results['tasks']} fine-tunes of {results['finetune_seconds']:g} s on {results['workers']} slots | " \
           + " | ".join(r["database"] for r in runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(_cell(cell, r) for r in runs) + " |" for label, cell in rows]
    failed = [f"- {r['database']}, {stage}: the flow failed: `{error}` (HTTP errors logged: client "
              f"{r['client_http_errors_logged']}, server {r['server_errors_logged']})"
              for r in runs for stage, error in failures(r)]
    return "\n".join(lines + ([""] + failed if failed else []))


def failures(run: dict[str, Any]) -> list[tuple[str, str]]:
    """Where a trial failed and the error: the trial process, its first run or its resume."""
    stages = (("trial", run.get("error")), ("first run", run.get("first", {}).get("error")),
              ("resume", run.get("resume", {}).get("error")))
    return [(stage, error) for stage, error in stages if error]


def _both(run: dict[str, Any], key: str) -> str:
    """A figure of the first run and of the resume, "-" for one that did not get that far."""
    return ", ".join(str(run.get(stage, {}).get(key, "-")) for stage in ("first", "resume"))


def _cell(cell, run: dict[str, Any]) -> str:
    """A figure of the table, or "-" where a failed run has none."""
    try:
        return cell(run)
    except (KeyError, TypeError):
        return "-"


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return path.as_posix()


def write_results(results: dict[str, Any], out: Path, report: Path) -> None:
    from airrep.atomic import write_text_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    marker = "<!-- results: generated by python -m benchmarks.orchestration -->"
    text = report.read_text() if report.exists() else marker + "\n"
    head = text.split(marker)[0]
    machine = results["machine"]
    write_text_atomic(report, head + marker + "\n\n" + markdown(results) + "\n\n"
                      f"Measured {results['date']} on {machine['cores']} cores ({machine['processor']}), "
                      f"Prefect {machine['prefect']}, PostgreSQL {machine['postgres']}; "
                      f"{results['wall_minutes']} min in all. Raw figures: `{shown_path(out)}`.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000, help="fine-tunes per run")
    parser.add_argument("--workers", type=int, default=50, help="concurrent fine-tunes (slots)")
    parser.add_argument("--runner", choices=("threads", "dask"), default="threads",
                        help="the fan-out's task runner (see above)")
    parser.add_argument("--processes", type=int, default=2, help="with --runner dask: worker processes")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of the stand-in fine-tune")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds allowed per trial")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/orchestration.json")
    parser.add_argument("--report", type=Path, default=REPO / "benchmarks/ORCHESTRATION.md")
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs and databases")
    parser.add_argument("--render", action="store_true", help="only rewrite the report from --out's figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.render:
        write_results(json.loads(args.out.read_text()), args.out, args.report)
        return
    from flows.cli import prepare_environment

    prepare_environment()
    import prefect

    from infra.postgres import find_bin_dir

    folder = Path(tempfile.mkdtemp(prefix="airrep-bench-orchestration-"))
    start = time.perf_counter()
    runs = []
    try:
        for name in args.databases.split(","):
            log.info("%s: %d fine-tunes on %d slots", name, args.tasks, args.workers)
            runs.append(run_database(name, args, folder / name))
            log.info("%s: %s", name, json.dumps(runs[-1]))
    finally:
        if args.keep or not all(r["checks"]["ok"] for r in runs):
            log.info("logs and databases kept in %s", folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    bin_dir = find_bin_dir()
    postgres_version = re.search(r"\d+(\.\d+)*", subprocess.run(  # "postgres (PostgreSQL) 15.18 (Debian ...)"
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True).stdout).group() if bin_dir else None
    results = {"date": time.strftime("%Y-%m-%d"), "tasks": runs[0]["tasks"], "workers": runs[0]["workers"],
               "finetune_seconds": args.seconds, "wall_minutes": round((time.perf_counter() - start) / 60, 1),
               "machine": {"cores": os.cpu_count(), "processor": _processor(), "prefect": prefect.__version__,
                           "postgres": postgres_version},
               "runs": runs}
    write_results(results, args.out, args.report)
    print(markdown(results))
    if not all(r["checks"]["ok"] for r in runs):
        sys.exit("a check failed: see 'checks' in " + str(args.out))


def _processor() -> str:
    from benchmarks.speed import cpu_model

    return cpu_model()


if __name__ == "__main__":
    main()
