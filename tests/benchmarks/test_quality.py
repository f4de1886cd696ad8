"""The quality benchmark's report: tables, paper columns and plots drawn from quality.json."""

from __future__ import annotations

import json

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
