"""A Prefect API server of its own: ``prefect server start`` on a free loopback port, with its
own PREFECT_HOME, for what needs a real server rather than the temporary one a flow starts by
itself (deployments, automations, a load test on a chosen database).

Used by the orchestration benchmark and the deployment test; the production profile runs the
server as a service instead (``infra/deploy/compose.yaml``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra.postgres import free_port

PREFECT = str(Path(sys.executable).parent / "prefect")
START_SECONDS = 180.0  # a fresh sqlite database is migrated first: tens of seconds on 2 busy cores
STOP_SECONDS = 60.0  # a server still writing a backlog of events takes a while
# Settings that would point the server, or the clients told about it, somewhere else.
_FOREIGN = ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_EPHEMERAL_ENABLED")


@dataclass(frozen=True)
class PrefectServer:
    api: str  # http://127.0.0.1:<port>/api
    process: subprocess.Popen
    env: dict[str, str]  # for clients: this environment with PREFECT_API_URL and PREFECT_HOME set
    start_seconds: float  # from the start command to the first healthy answer


def wait_healthy(api: str, server: subprocess.Popen, log_path: Path, timeout: float = START_SECONDS) -> float:
    """Seconds until ``api``/health answers; RuntimeError with the log's tail if the server
    exits or does not answer within ``timeout``."""
    start = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(api + "/health", timeout=10):
                return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if server.poll() is not None or time.perf_counter() - start > timeout:
                raise RuntimeError("prefect server did not start:\n" + log_path.read_text()[-3000:]) from None
            time.sleep(0.5)


@contextmanager
def prefect_server(home: Path, log_path: Path, database_url: str | None = None) -> Iterator[PrefectServer]:
    """Start the server (its sqlite database under ``home`` unless ``database_url`` names
    another), with this process's environment less what would point it elsewhere, wait until
    it answers, and terminate it on exit; its log goes to ``log_path``."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
    base |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_env = base | ({"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {})
    with open(log_path, "wb") as out:
        server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port),
                                   "--no-ui", "--analytics-off"], env=server_env, stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            seconds = wait_healthy(api, server, log_path)
            yield PrefectServer(api, server, base | {"PREFECT_API_URL": api}, seconds)
        finally:
            server.terminate()
            try:
                server.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
