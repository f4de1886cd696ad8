"""benchmarks/gpu_recipe.sh: the GPU recipe runs end to end at toy size on a CPU, and refuses
to start its real size without a GPU, saying what to do."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_recipe.sh"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    return subprocess.run(["bash", str(RECIPE), *args], env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here: the recipe would start")
def test_without_a_gpu_the_recipe_says_to_use_toy(tmp_path):
    result = _run(tmp_path)
    assert result.returncode != 0
    assert "no CUDA device here; run it with --toy" in result.stderr


def test_the_toy_recipe_writes_the_frontier_with_logra_and_trak_at_each_budget(tmp_path):
    result = _run(tmp_path, "--toy")
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "out"
    rows = {r["method"]: r for r in json.loads((out / "quality.json").read_text())["datasets"]["sharegpt"]
            ["table"]["rows"]}
    assert {"airrep", "tfidf", "logra-sum", "tracin-sum", "trak-sum", "logra-sum@256", "trak-sum@32",
            "trak-sum@128"} <= set(rows)
    assert all(math.isfinite(r["lds"]) for r in rows.values())
    # LoGra: the toy LM has 8 linear layers, so 256 numbers is 5x5 per layer; TRAK keeps its budget.
    assert rows["logra-sum@256"]["dim"] == 200 and rows["trak-sum@128"]["bytes"] == 4 * 128
    assert rows["airrep"]["bytes"] > 4 * 384  # the embedding and its sparse TF-IDF row
    report = (out / "RESULTS.md").read_text()
    assert "## LDS against cost (the frontier)" in report and "| trak-sum@32 | 32 | 128 |" in report
    assert (out / "quality-frontier.png").stat().st_size > 1000
