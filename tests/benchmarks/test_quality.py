"""The quality benchmark's report: tables, paper columns and plots drawn from quality.json."""

from __future__ import annotations

import json
import os

from benchmarks.quality import PAPER, main
from flows.cli import ensure_prefect_home


def _table(lds_by_method: dict[str, float], ceiling: float) -> dict:
    rows = [{"method": m, "lds": v, "dim": 384 if m.startswith(("airrep", "encoder")) else 3840, "seconds": 1.0,
             "note": ""} for m, v in lds_by_method.items()]
    return {"rows": rows, "noise_ceiling": ceiling}


def test_report_only_renders_every_measured_figure(tmp_path):
    curve = {"step": list(range(1, 21)), "loss": [0.7 - 0.01 * i for i in range(20)],
             "pair_accuracy": [0.5 + 0.01 * i for i in range(20)], "eval_step": [], "eval_lds": [], "seconds": 60.0}
    dataset = {"seconds": 600.0, "finetunes_computed": 224, "finetunes_skipped": 0, "curve": curve}
    results = {
        "config": "configs/bench.yaml", "overrides": [], "seconds": 1234.0,
        "machine": {"cores": 2, "cpu_capability": "AVX512", "processor": "AMD EPYC", "torch": "2.13.0",
                    "cpu_flags": {"amx_tile": False, "avx512": True, "avx512_bf16": True}},
        "datasets": {
            "sharegpt": {**dataset, "table": _table({"airrep": 0.1234, "tfidf": 0.2, "logra-sum": float("nan")}, 0.8)},
            "natural_instructions": {**dataset, "table": _table({"airrep": 0.3012, "encoder": 0.25}, 0.9)},
        },
        "classification": {"rows": [{"features": "airrep", "dim": 384, "accuracy": 0.875, "seconds": 1.0}],
                           "n_records": 600, "n_tasks": 20, "majority_baseline": 0.1},
    }
    (tmp_path / "quality.json").write_text(json.dumps(results))
    main(["--report-only", "--out", str(tmp_path), "--markdown", str(tmp_path / "RESULTS.md")])

    report = (tmp_path / "RESULTS.md").read_text()
    assert "| airrep | 12.34 | 30.12 | 384 | 15.14 | 21.11 | 26.23 |" in report
    assert "| logra-sum | - | - |" in report  # NaN is shown as missing, not as a number
    assert "| *noise ceiling* | 80.00 | 90.00 |" in report
    assert "2 CPU cores (AMD EPYC, AVX512; torch sees avx512, avx512_bf16; not amx_tile)" in report
    assert "| airrep | 384 | 87.5 | 86.41 |" in report
    for name in ("quality-lds.png", "quality-training.png", "quality-classification.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert json.loads((tmp_path / "quality.json").read_text())["paper"] == PAPER


def test_prefect_home_is_created_with_its_parents(tmp_path, monkeypatch):
    """On a fresh clone ``make bench`` points PREFECT_HOME at ``.work/prefect`` before ``.work``
    exists; Prefect itself creates only the last folder, and its server then cannot start."""
    home = tmp_path / "clone" / ".work" / "prefect"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    ensure_prefect_home()
    assert home.is_dir()


def _row(method, lds, dim, size, per_query):
    return {"method": method, "lds": lds, "dim": dim, "bytes": size, "seconds": 150 * per_query, "note": "",
            "seconds_per_query": per_query}


def test_frontier_says_how_much_storage_logra_needs_to_match_airrep(tmp_path):
    from benchmarks.frontier import frontier_points, storage_to_match

    rows = [_row("airrep", 0.30, 2384, 2000.0, 0.05), _row("airrep-sum", 0.2, 2384, 2000.0, 0.05),
            _row("tfidf", 0.25, 2000, 464.0, 0.001), _row("logra-sum", 0.20, 3840, 15360.0, 0.1),
            _row("logra-sum@375", 0.15, 375, 1500.0, 0.08), _row("logra-sum@18375", 0.40, 18375, 73500.0, 0.3),
            _row("trak-sum@384", 0.10, 384, 1536.0, 1.5)]
    points = frontier_points({"rows": rows})
    assert "airrep-sum" not in [r["method"] for r in points]  # an ablation, not a point of cost
    # LoGra crosses 0.30 between 15360 and 73500 bytes: half way in LDS, so the geometric mean.
    assert storage_to_match(points, "logra-sum", points[0]) == \
        f"logra-sum needs about {(15360 * 73500) ** 0.5 / 2000:.2g}× airrep's bytes per example to match it."
    assert "stays below airrep up to its largest budget, 384 numbers" in storage_to_match(points, "trak-sum",
                                                                                         points[0])
    low = {**points[0], "lds": 0.1}
    assert "already at its smallest budget, 375 numbers" in storage_to_match(points, "logra-sum", low)

    curve = {"step": [1, 2], "loss": [0.7, 0.6], "pair_accuracy": [0.5, 0.6], "eval_step": [], "eval_lds": [],
             "seconds": 1.0}
    dataset = {"seconds": 60.0, "finetunes_computed": 2, "finetunes_skipped": 0, "curve": curve,
               "table": {"rows": rows, "noise_ceiling": 0.8}}
    results = {"config": "configs/bench.yaml", "overrides": [], "seconds": 60.0,
               "machine": {"cores": 2, "cpu_capability": "AVX2", "torch": "2.13.0"},
               "datasets": {"sharegpt": dataset}}
    (tmp_path / "quality.json").write_text(json.dumps(results))
    main(["--report-only", "--out", str(tmp_path), "--markdown", str(tmp_path / "RESULTS.md")])
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| logra-sum@18375 | 18375 | 73,500 | 0.3 | 40.00 |" in report
    assert "| tfidf | 2000 | 464 | 0.001 | 25.00 |" in report
    assert (tmp_path / "quality-frontier.png").stat().st_size > 1000


def test_the_cli_sets_what_the_makefile_exports(monkeypatch):
    """``airrep`` and ``python -m benchmarks...`` run outside make too: the same quiet, offline
    defaults, never overriding what the environment sets."""
    import re
    from pathlib import Path

    from flows.cli import QUIET_DEFAULTS, prepare_environment

    exported = dict(re.findall(r"^export (\w+) \??= ?(\S+)$", Path("Makefile").read_text(), re.M))
    exported.pop("PREFECT_HOME")  # a folder of the checkout: make's alone
    assert exported == QUIET_DEFAULTS
    for name in QUIET_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    prepare_environment()
    assert os.environ["HF_HUB_OFFLINE"] == "0" and os.environ["DO_NOT_TRACK"] == "1"
