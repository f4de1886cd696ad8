"""The orchestration benchmark's parts that decide its figures: the stand-in fine-tune (what
it publishes and how its calls are counted) and the overhead arithmetic. The benchmark
itself (`make bench-orchestration`) starts servers and runs for many minutes: not a test."""

from __future__ import annotations

import numpy as np
import pytest

import airrep.finetune
import tasks.labels
from airrep.config import FinetuneConfig
from benchmarks import fixed_finetune
from benchmarks.orchestration import markdown, overhead


def test_stand_in_replaces_only_the_fine_tune_and_logs_every_call(tmp_path, monkeypatch):
    # Registered first, so that the originals are back after the test whatever install() does.
    monkeypatch.setattr(airrep.finetune, "finetune_and_evaluate", airrep.finetune.finetune_and_evaluate)
    monkeypatch.setattr(tasks.labels, "finetune_and_evaluate", tasks.labels.finetune_and_evaluate)
    monkeypatch.setenv(fixed_finetune.SECONDS_ENV, "0.01")
    monkeypatch.setenv(fixed_finetune.CALLS_ENV, str(tmp_path / "calls.log"))
    fixed_finetune.install()
    assert tasks.labels.finetune_and_evaluate is fixed_finetune.fixed_finetune
    assert airrep.finetune.finetune_and_evaluate is fixed_finetune.fixed_finetune

    dev = ["a", "b", "c"]
    first, stats = tasks.labels.finetune_and_evaluate(None, None, ["x"], dev, FinetuneConfig(), 7)
    again, _ = tasks.labels.finetune_and_evaluate(None, None, ["x"], dev, FinetuneConfig(), 7)
    other, _ = tasks.labels.finetune_and_evaluate(None, None, ["x"], dev, FinetuneConfig(), 8)
    assert first.shape == (3,) and first.dtype == np.float32 and np.all((first >= 1) & (first <= 3))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert stats.train_seconds == pytest.approx(0.01)
    assert fixed_finetune.read_calls(tmp_path / "calls.log") == [7, 7, 8]
    assert fixed_finetune.read_calls(tmp_path / "missing.log") == []


def test_overhead_is_slot_time_beyond_the_fine_tunes():
    # 95 tasks of 2 s on 10 slots: 10 waves, ideal 20 s; 25 s measured.
    result = {"tasks": 95, "workers": 10, "finetune_seconds": 2.0,
              "first": {"wall_seconds": 25.0, "task_run_states": {"COMPLETED": 94, "CRASHED": 1}},
              "resume": {"flow_seconds": 3.0, "task_run_states": {"FAILED": 2}}}
    figures = overhead(result)
    # Slot-seconds held (10 slots × 25 s) less what a perfect scheduler needs for 10 waves
    # (10 slots × 20 s), per task.
    assert figures["overhead_per_task_seconds"] == pytest.approx((10 * 25 - 10 * 20) / 95, abs=1e-4)
    assert figures["overhead_percent"] == pytest.approx(100 * 50 / 95 / 2, abs=0.01)
    assert figures["failed_or_crashed_task_runs"] == 3
    assert overhead({**result, "first": {"error": "boom", "wall_seconds": 25.0}})["overhead_percent"] is None


def test_a_failed_trial_is_reported_not_dropped():
    failed = {"database": "sqlite", "tasks": 10, "workers": 5, "error": "PrefectHTTPStatusError: 503",
              "checks": {"ok": False}, "client_http_errors_logged": 4, "server_errors_logged": 2}
    text = markdown({"tasks": 10, "workers": 5, "finetune_seconds": 2.0, "runs": [failed]})
    assert "| overhead per task, s | - |" in text
    assert "sqlite, trial: the flow failed: `PrefectHTTPStatusError: 503`" in text
    assert "| checks pass | **no** |" in text
