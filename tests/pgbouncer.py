"""A PgBouncer of a test's own, in front of the test PostgreSQL: to pool through, kill and restart.

Debian's ``pgbouncer`` package (1.18; ``.ci/services`` installs it), started as a plain process on a
free loopback port with a configuration file in a temporary directory, never as the system's
service. ``pool_mode = transaction`` unless told otherwise: a server connection is a client's for
one transaction only, which is what a worker needs ``EVENTWORKER_DB_POOLER=transaction`` for.
Authentication is ``trust`` (the user must still be in the auth file), as on the test server.

PgBouncer refuses to run as root: as root it is started with ``-u postgres``, and its directory
is one that user can read (pytest's own temporary directories are private to root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

PGBOUNCER = os.environ.get("EVENTWORKER_TEST_PGBOUNCER", "/usr/sbin/pgbouncer")
#: Who runs PgBouncer when the tests run as root.
RUN_AS = "postgres"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgBouncer:
    """``pgbouncer`` in front of the PostgreSQL of ``server_url``, on a port of its own.

    ``pool_size``: server connections per database and user (``default_pool_size``; no reserve
    pool, so never more). ``max_client_conn``: client connections it accepts in all.
    """

    def __init__(
        self,
        server_url: str,
        *,
        pool_size: int = 4,
        pool_mode: str = "transaction",
        max_client_conn: int = 500,
    ) -> None:
        server = make_url(server_url)
        self.server_host = server.host or "127.0.0.1"
        self.server_port = server.port or 5432
        self.user = server.username or "postgres"
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.max_client_conn = max_client_conn
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="ew-pgbouncer-"))
        self.workdir.chmod(0o755)
        self.log = self.workdir / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._write_config()

    def _write_config(self) -> None:
        config = self.workdir / "pgbouncer.ini"
        users = self.workdir / "userlist.txt"
        users.write_text(f'"{self.user}" ""\n')
        config.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\nadmin_users = {self.user}\n"
            f"pool_mode = {self.pool_mode}\ndefault_pool_size = {self.pool_size}\n"
            "reserve_pool_size = 0\nmin_pool_size = 0\n"
            f"max_client_conn = {self.max_client_conn}\n"
            # A restart drill's clients reconnect at once; a refused login is retried by them anyway.
            "server_login_retry = 1\n"
            "log_connections = 0\nlog_disconnections = 0\n"
        )
        for path in (config, users):
            path.chmod(0o644)

    def _command(self) -> list[str]:
        user = ["-u", RUN_AS] if os.geteuid() == 0 else []
        return [PGBOUNCER, *user, str(self.workdir / "pgbouncer.ini")]

    def url(self, database: str, driver: str = "asyncpg", password: str | None = None) -> str:
        """The SQLAlchemy URL of ``database`` through this PgBouncer."""
        url = make_url(f"postgresql+{driver}://{self.user}@127.0.0.1:{self.port}/{database}")
        if password is not None:
            url = url.set(password=password)
        return url.render_as_string(hide_password=False)

    def start(self, timeout: float = 20) -> PgBouncer:
        """Start it and wait until it accepts connections."""
        assert self.process is None or self.process.poll() is not None, "already running"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"pgbouncer exited:\n{self.log.read_text(errors='replace')}"
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, f"pgbouncer on {self.port} did not listen"
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: every client and server connection it held is cut at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (immediate shutdown), then remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, down_for: float = 0.0) -> None:
        """Kill it, wait ``down_for`` seconds, start it again on the same port."""
        self.kill()
        time.sleep(down_for)
        self.start()

    @property
    def console_dsn(self) -> str:
        """libpq's DSN of the admin console (the ``pgbouncer`` database)."""
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname=pgbouncer"

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console (``SERVERS``, ``POOLS``, ...), a dict per row (see
        :class:`Console`)."""
        with psycopg.connect(self.console_dsn, autocommit=True) as console:
            cursor = console.execute(f"SHOW {what}")
            return _rows(cursor.description, cursor.fetchall())

    @contextlib.asynccontextmanager
    async def console(self) -> AsyncIterator[Console]:
        """The admin console over one connection, for sampling it often."""
        connection = await psycopg.AsyncConnection.connect(
            self.console_dsn, autocommit=True, prepare_threshold=None
        )
        try:
            yield Console(connection)
        finally:
            await connection.close()

    def server_connections(self, database: str) -> int:
        """Server connections PgBouncer holds to ``database`` right now (``SHOW SERVERS``)."""
        return sum(1 for row in self.show("SERVERS") if row["database"] == database)


class Console:
    """PgBouncer's admin console on an open connection.

    psycopg sends a statement without parameters in the simple query protocol, the only one the
    console speaks (asyncpg's fetches use the extended one), unless it has run it often enough to
    prepare it: never, here (``prepare_threshold=None``).
    """

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._connection = connection

    async def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>``, a dict per row."""
        cursor = await self._connection.execute(f"SHOW {what}")
        return _rows(cursor.description, await cursor.fetchall())


def _rows(description: Any, rows: list[Any]) -> list[dict[str, Any]]:
    names = [column.name for column in description or ()]
    return [dict(zip(names, row, strict=True)) for row in rows]
