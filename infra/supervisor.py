"""A bounded stop: run a command in a process group of its own and end it within a grace
period of a stop signal, with everything it started.

A flow run cannot promise that on its own. Prefect turns SIGTERM into a Crashed flow run,
but a fine-tune running in a worker thread is not interruptible and the interpreter waits
for it at exit (minutes for an LLM), and a run whose temporary API server was signalled
with it (``timeout`` and terminals signal the whole process group) keeps retrying a refused
connection. So the command runs as a child in a new process group: a stop signal reaches
only the child, which marks its flow run Crashed while its API server still answers and
exits if it can; once the grace period has passed, the whole group is killed. Nothing
finished is lost by the kill: every publish is atomic and a re-run skips finished work.

A supervisor that is itself SIGKILLed (``kill -9 -PGID``, ``timeout --kill-after``) cannot
stop the group, so the command kills its own group as soon as its supervisor dies
(:func:`join_supervisor`, Linux).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
POLL_SECONDS = 0.2
# The supervisor's pid, in the environment of the command it runs.
SUPERVISOR_ENV = "AIRREP_SUPERVISOR_PID"
# Sent by the kernel to the command when its supervisor dies (prctl PR_SET_PDEATHSIG).
SUPERVISOR_GONE = signal.SIGUSR2
PR_SET_PDEATHSIG = 1


class _Stop:
    """The first stop signal received and when the group must be gone."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.child: subprocess.Popen | None = None
        self.signum: int | None = None
        self.deadline = float("inf")

    def start(self, command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
        self.child = subprocess.Popen(list(command), env={**env, SUPERVISOR_ENV: str(os.getpid())},
                                      process_group=0)
        if self.signum is not None:  # a signal came while it was starting
            self.child.send_signal(self.signum)
        return self.child

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:  # asked twice: do not wait any longer
            self.deadline = time.monotonic()
            return
        self.signum, self.deadline = signum, time.monotonic() + self.grace
        logger.warning("%s: stopping; the run has %.0f s to finish, then it is killed (finished work is kept, "
                       "a re-run resumes)", signal.Signals(signum).name, self.grace)
        if self.child is not None:
            self.child.send_signal(signum)


def kill_group(pgid: int) -> None:
    """SIGKILL every process left in the group (none is fine)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_supervised(command: Sequence[str], env: Mapping[str, str], grace: float) -> int:
    """Run ``command`` to its end and return its exit status in the shell's form (128 + the
    signal for a signal). A stop signal (SIGTERM, SIGINT, SIGHUP) is passed on to the command
    alone; if it has not exited ``grace`` seconds later its process group is killed; either
    way the status is 128 + that signal, a failure to whoever sent it. Processes the command
    leaves behind in its group are killed when it exits."""
    stop = _Stop(grace)
    previous = {signum: signal.signal(signum, stop.on_signal) for signum in STOP_SIGNALS}
    try:
        child = stop.start(command, env)
        try:
            while child.poll() is None and time.monotonic() < stop.deadline:
                try:
                    child.wait(timeout=POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            if child.returncode is None:
                logger.error("still running after %s: killed with everything it started",
                             signal.Signals(stop.signum).name)
        finally:
            kill_group(child.pid)
            child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stop.signum is not None:
        return 128 + stop.signum
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


def join_supervisor() -> bool:
    """In a command that :func:`run_supervised` started: arrange for its whole process group
    to be killed the moment the supervisor dies, and return True; elsewhere return False.

    The kernel signals the death (PR_SET_PDEATHSIG) to a thread that waits for nothing else:
    the main thread may be inside a fine-tune for minutes, and a Python signal handler only
    runs there. The variable is removed, so the processes the command starts do not take
    themselves for supervised.
    """
    supervisor = os.environ.pop(SUPERVISOR_ENV, None)
    if supervisor is None or os.getpgrp() != os.getpid():  # not started by run_supervised
        return False
    if sys.platform.startswith("linux"):
        # Blocked here before any thread exists, so in every thread: only the waiter takes it
        # (the processes it starts inherit the block; nothing sends them this signal).
        signal.pthread_sigmask(signal.SIG_BLOCK, {SUPERVISOR_GONE})
        threading.Thread(target=_kill_group_on, args=(SUPERVISOR_GONE,), name="supervisor-watch",
                         daemon=True).start()
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(SUPERVISOR_GONE), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(supervisor):  # it died before that took effect
        kill_group(os.getpgrp())
    return True


def _kill_group_on(signum: int) -> None:
    signal.sigwait({signum})
    kill_group(os.getpgrp())
