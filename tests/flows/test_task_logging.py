"""Fan-out logs stay readable: one copy of Prefect's thread-timeout warning per process."""

from __future__ import annotations

import logging

from tasks.labels import _ThreadTimeoutWarningOnce


def record(message: str, *args) -> logging.LogRecord:
    return logging.LogRecord("prefect.task_runs", logging.WARNING, __file__, 1, message, args, None)


def test_thread_timeout_warning_passes_once_and_other_records_always():
    warning = ("Timeout of %s seconds configured for this task, but the task is running in a worker thread. "
               "Timeouts in worker threads cannot interrupt blocking operations")
    once = _ThreadTimeoutWarningOnce()
    assert [once.filter(record(warning, 3600.0)) for _ in range(3)] == [True, False, False]
    assert once.filter(record("split0-subset1: %.1f s", 2.7))
    assert any(isinstance(f, _ThreadTimeoutWarningOnce) for f in logging.getLogger("prefect.task_runs").filters)
