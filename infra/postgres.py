"""A throwaway PostgreSQL cluster on 127.0.0.1: the production profile's database, started
from the Debian packages' binaries for the orchestration benchmark and the registry test.

``initdb`` into a fresh folder, ``pg_ctl start`` on a free loopback port with the socket in
that folder, ``pg_ctl stop`` and the folder removed at the end. PostgreSQL refuses to run
as root, so as root every server command runs as the ``postgres`` user that the Debian
package creates (``runuser -u postgres``), and the folder is handed to that user.

Loopback connections are trusted (no password): the cluster lives only as long as the
process that started it and listens on 127.0.0.1 only. The deployed profile
(``infra/deploy/compose.yaml``) uses passwords from the environment.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

POSTGRES_USER = "postgres"  # the system account Debian's postgresql package creates


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL server binaries here, or no unprivileged account to run them as."""


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's versioned
    ``/usr/lib/postgresql/<version>/bin`` (the newest), which is not on PATH."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalPostgres:
    """``with LocalPostgres() as pg: pg.url("prefect", "postgresql+asyncpg")``.

    One cluster, any number of databases (:meth:`create_database`). Its server log is
    ``<folder>/server.log``.
    """

    def __init__(self, bin_dir: Path | None = None, user: str = "airrep") -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise PostgresUnavailableError(
                "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: "
                "apt-get install -y postgresql")
        self.bin_dir = found
        self.user = user  # the cluster's superuser role (not a system account)
        self.port = 0
        self.folder = Path()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                import pwd

                pwd.getpwnam(POSTGRES_USER)
            except KeyError as exc:
                raise PostgresUnavailableError(
                    f"PostgreSQL does not run as root and there is no {POSTGRES_USER!r} account to run it "
                    "as (Debian's postgresql package creates it)") from exc

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    def _command(self, name: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / name), *args]
        return ["runuser", "-u", POSTGRES_USER, "--", *command] if self._as_root else command

    def _run(self, name: str, *args: str) -> str:
        result = subprocess.run(self._command(name, *args), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{name} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result.stdout

    def start(self) -> LocalPostgres:
        self.folder = Path(tempfile.mkdtemp(prefix="airrep-postgres-"))
        if self._as_root:
            shutil.chown(self.folder, POSTGRES_USER, POSTGRES_USER)
        self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.port = free_port()
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run("pg_ctl", "start", "-w", "-t", "120", "-D", str(self.data_dir), "-l",
                  str(self.folder / "server.log"), "-o", options)
        return self

    def stop(self) -> None:
        if self.data_dir.exists():
            try:
                self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir))
            finally:
                shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with ``psql``; its unaligned, tuples-only output."""
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-At", "-c", statement).strip()

    def create_database(self, name: str) -> None:
        self.sql(f'CREATE DATABASE "{name}"')

    def database_bytes(self, name: str) -> int:
        return int(self.sql(f"SELECT pg_database_size('{name}')"))

    def url(self, database: str, driver: str = "postgresql") -> str:
        """A SQLAlchemy URL: ``postgresql+asyncpg`` for Prefect, ``postgresql`` (psycopg2) for MLflow."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def server_pids(self) -> list[int]:
        """The postmaster's process id (its backends are its children)."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return [int(pid_file.read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []
