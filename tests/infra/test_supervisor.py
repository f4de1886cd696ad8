"""The bounded stop of ``infra.supervisor``, on real processes: a command that ignores a stop
signal is killed with everything it started once the grace period has passed; one that
exits on the signal is not waited for; the exit status tells the signal apart from success;
and a SIGKILLed supervisor takes the command's whole process group with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
GRACE = 2.0
MARGIN = 3.0  # the supervisor's polling and the kill, on busy cores

# The supervised command: starts a grandchild that ignores SIGTERM (as a server busy shutting
# down would), writes both pids, then ignores the stop signal (a fine-tune that cannot be
# interrupted) or dies of it, or exits with a status of its own while the grandchild lives on.
COMMAND = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    from infra.supervisor import join_supervisor
    assert join_supervisor()
    pids_path, behaviour = sys.argv[1], sys.argv[2]
    grandchild = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    if behaviour == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(pids_path + ".tmp", "w") as f:
        json.dump([os.getpid(), grandchild.pid], f)
    os.replace(pids_path + ".tmp", pids_path)
    if behaviour.startswith("exit"):
        sys.exit(int(behaviour[4:]))
    time.sleep(600)
""")
SUPERVISOR = ("import os, sys; from infra.supervisor import run_supervised; "
              "sys.exit(run_supervised(sys.argv[2:], os.environ, float(sys.argv[1])))")


def _start(tmp_path: Path, behaviour: str) -> tuple[subprocess.Popen, list[psutil.Process]]:
    pids_path = tmp_path / "pids.json"
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(GRACE), sys.executable, "-c", COMMAND,
                                   str(pids_path), behaviour], cwd=ROOT)
    deadline = time.monotonic() + 30
    while not pids_path.exists():
        if supervisor.poll() is not None and not behaviour.startswith("exit"):
            pytest.fail(f"the supervisor exited with {supervisor.returncode} before the command started")
        if time.monotonic() > deadline:
            supervisor.kill()
            pytest.fail("the command did not start within 30 s")
        time.sleep(0.02)
    return supervisor, [psutil.Process(pid) for pid in json.loads(pids_path.read_text())]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_all_gone(processes: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 2
    while any(_alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [p for p in processes if _alive(p)]
    for survivor in survivors:
        survivor.kill()
    assert not survivors


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_command_that_ignores_the_signal_is_killed_with_its_group_after_the_grace(tmp_path, signum):
    supervisor, started = _start(tmp_path, "ignore")
    supervisor.send_signal(signum)
    sent = time.monotonic()
    try:
        supervisor.wait(timeout=GRACE + MARGIN)
    except subprocess.TimeoutExpired:
        for process in [supervisor, *started]:
            process.kill()
        pytest.fail(f"still running {GRACE + MARGIN:.0f} s after {signum.name}")
    assert time.monotonic() - sent >= GRACE  # it was given its grace
    assert supervisor.returncode == 128 + signum
    _assert_all_gone(started)


def test_a_command_that_exits_on_the_signal_is_not_waited_for(tmp_path):
    supervisor, started = _start(tmp_path, "die")
    supervisor.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    supervisor.wait(timeout=GRACE + MARGIN)
    assert time.monotonic() - sent < GRACE
    assert supervisor.returncode == 128 + signal.SIGTERM
    _assert_all_gone(started)  # the grandchild ignored SIGTERM; the group kill ended it


def test_the_command_status_passes_through_and_what_it_left_behind_is_killed(tmp_path):
    supervisor, started = _start(tmp_path, "exit3")
    assert supervisor.wait(timeout=30) == 3
    _assert_all_gone(started)


def test_the_supervisor_leaves_its_own_process_group_alone(tmp_path):
    """The command runs in a group of its own: a stop signal sent to the supervisor's group
    (as ``timeout`` and terminals send it) reaches the command only through the supervisor."""
    supervisor, started = _start(tmp_path, "ignore")
    assert os.getpgid(started[0].pid) == started[0].pid != os.getpgid(supervisor.pid)
    supervisor.send_signal(signal.SIGTERM)
    supervisor.wait(timeout=GRACE + MARGIN)
    _assert_all_gone(started)


def test_a_sigkilled_supervisor_takes_the_command_and_what_it_started_with_it(tmp_path):
    supervisor, started = _start(tmp_path, "ignore")
    supervisor.kill()
    supervisor.wait(timeout=10)
    _assert_all_gone(started)
