"""Throwaway PostgreSQL 15 clusters of a test's own: TLS, streaming replicas, a primary to stop and promote.

The shared server on 127.0.0.1:5432 is never touched. A :class:`PgCluster` is made with Debian's
``initdb`` and ``pg_ctl`` in a temporary directory, listens on a free loopback port (and a Unix
socket in its own directory), and is stopped and removed by :meth:`PgCluster.destroy`:

- ``tls=``: ``ssl = on`` with a server certificate signed by a CA the test made
  (:class:`Certificates`, through the ``openssl`` command line); ``hostssl_only``: ``pg_hba.conf``
  accepts TCP connections only over TLS, as a managed PostgreSQL does.
- :meth:`PgCluster.replica`: a streaming replica of the cluster, made by ``pg_basebackup -R`` into
  a cluster of its own on another port; :meth:`PgCluster.promote` makes it a primary.

PostgreSQL's programs refuse to run as root: as root they run as the ``postgres`` user
(``runuser``), which owns the directories. Authentication is ``trust`` throughout (the tests
put passwords in URLs to check that none leaks; any password is accepted).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

#: Debian's PostgreSQL 15 programs (``postgresql-15``, which the shared server runs from).
PG_BIN = Path(os.environ.get("EVENTWORKER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: Who runs the server: PostgreSQL will not run as root.
PG_USER = "postgres"

#: What every test cluster runs with: small, quick to start, and nothing on disk waits for fsync
#: (the machine does not crash; a stopped or killed server loses nothing the OS was given).
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "shared_buffers": "'32MB'",
    "max_connections": "100",
    "fsync": "off",
    "synchronous_commit": "on",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "hot_standby": "on",
    "log_min_messages": "warning",
    "logging_collector": "off",
}


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], *, as_server: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(
        _as_server_user(command) if as_server else command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def _owned_directory(prefix: str) -> Path:
    """A new directory under the system's temporary directory that the server's user owns.

    pytest's own temporary directories are private to root, which the server's user cannot enter.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, PG_USER, PG_USER)
    return path


@dataclass(frozen=True)
class Certificates:
    """A certificate authority and a server certificate it signed, for ``hostnames`` only."""

    ca: Path
    server_cert: Path
    server_key: Path
    hostnames: tuple[str, ...]

    @classmethod
    def make(cls, directory: Path, hostnames: Iterable[str] = ("localhost",)) -> Certificates:
        """Make a CA and a server certificate (P-256 keys, valid two days) with ``openssl``.

        The server certificate names ``hostnames`` in its subjectAltName and nothing else, so a
        client checking host names (``sslmode=verify-full``) accepts only those.
        """
        names = tuple(hostnames)
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, ca, key, csr, cert = (
            directory / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
        )
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ca_subject = ["-subj", "/CN=eventworker test CA", "-keyout", str(ca_key), "-out", str(ca)]
        ca_extensions = ["-addext", "basicConstraints=critical,CA:TRUE"]
        ca_extensions += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
        _run(["openssl", "req", "-x509", *ec, "-days", "2", *ca_subject, *ca_extensions], as_server=False)
        _run(
            ["openssl", "req", *ec, "-subj", f"/CN={names[0]}", "-keyout", str(key), "-out", str(csr)],
            as_server=False,
        )
        extensions = directory / "server.ext"
        extensions.write_text(
            "subjectAltName=" + ",".join(f"DNS:{name}" for name in names) + "\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
        )
        signing = ["-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2"]
        _run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                *signing,
                "-extfile",
                str(extensions),
                "-out",
                str(cert),
            ],
            as_server=False,
        )
        return cls(ca=ca, server_cert=cert, server_key=key, hostnames=names)


class PgCluster:
    """One PostgreSQL 15 cluster in a temporary directory, on a free loopback port."""

    def __init__(self, root: Path, port: int, certificates: Certificates | None = None) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.log = root / "server.log"
        self.certificates = certificates

    # --- making one -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        tls: Certificates | None = None,
        hostssl_only: bool = False,
        settings: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> PgCluster:
        """``initdb`` a new cluster and (unless ``start`` is false) start it.

        ``tls``: serve TLS with that server certificate. ``hostssl_only``: refuse TCP connections
        that are not encrypted (``hostssl`` lines only in ``pg_hba.conf``). ``settings``: more
        ``postgresql.conf`` lines, as written there (strings quoted).
        """
        cluster = cls(_owned_directory("ew-pg-"), free_port(), tls)
        options = ["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
        _run([str(PG_BIN / "initdb"), "-D", str(cluster.data), *options, "--no-instructions"])
        conf = {**BASE_SETTINGS, **cluster._local_settings()}
        if tls is not None:
            for source, name in ((tls.server_cert, "server.crt"), (tls.server_key, "server.key")):
                target = cluster.data / name
                shutil.copyfile(source, target)
                target.chmod(0o600)
                if os.geteuid() == 0:
                    shutil.chown(target, PG_USER, PG_USER)
            conf.update({"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"})
        conf.update(settings or {})
        cluster.configure(conf)
        kind = "hostssl" if hostssl_only else "host"
        (cluster.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "local replication all trust\n"
            f"{kind} all all 127.0.0.1/32 trust\n"
            f"{kind} replication all 127.0.0.1/32 trust\n"
        )
        if start:
            cluster.start()
        return cluster

    def _local_settings(self) -> dict[str, str]:
        return {"port": str(self.port), "unix_socket_directories": f"'{self.root}'"}

    def configure(self, settings: Mapping[str, str]) -> None:
        """Append ``settings`` to ``postgresql.conf`` (the last line of a name wins), for the next start."""
        lines = "".join(f"{name} = {value}\n" for name, value in settings.items())
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(lines)

    def replica(
        self,
        *,
        settings: Mapping[str, str] | None = None,
        start: bool = True,
        through_port: int | None = None,
    ) -> PgCluster:
        """A streaming replica of this (running) cluster: ``pg_basebackup -R`` into a new cluster.

        ``-R`` writes ``standby.signal`` and the ``primary_conninfo`` back to this cluster; the copy
        of ``postgresql.conf`` gets the replica's own port and socket directory, then ``settings``.
        ``through_port``: the replica streams from this port instead (a :class:`DelayProxy` to the primary).
        """
        replica = PgCluster(_owned_directory("ew-pg-replica-"), free_port(), self.certificates)
        source = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "fast"]
        _run(
            [
                str(PG_BIN / "pg_basebackup"),
                "-D",
                str(replica.data),
                "-R",
                "-X",
                "stream",
                "--no-sync",
                *source,
            ]
        )
        replica.configure({**replica._local_settings(), **(settings or {})})
        if through_port is not None:  # -R wrote primary_conninfo to postgresql.auto.conf, read last
            with (replica.data / "postgresql.auto.conf").open("a") as auto:
                auto.write(f"primary_conninfo = 'host=127.0.0.1 port={through_port} user=postgres'\n")
        if start:
            replica.start()
        return replica

    # --- running it -------------------------------------------------------------------------------

    def _pg_ctl(self, *args: str, timeout: float = 60) -> str:
        return _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args], timeout=timeout + 10)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log))

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``fast`` (clients are disconnected, a clean shutdown) or
        ``immediate`` (what a crash or a pulled plug does to the clients: no shutdown checkpoint)."""
        if self.running:
            self._pg_ctl("stop", "-w", "-m", mode)

    def promote(self) -> None:
        """Make this standby a primary (``pg_ctl promote``), waiting until it accepts writes."""
        self._pg_ctl("promote", "-w")

    def reload(self) -> None:
        self._pg_ctl("reload")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        """Stop the server (immediately: nothing is kept) and remove its directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # --- reaching it ------------------------------------------------------------------------------

    def url(
        self,
        database: str = "postgres",
        *,
        driver: str | None = "asyncpg",
        host: str = "127.0.0.1",
        password: str | None = None,
        **query: str,
    ) -> str:
        """A SQLAlchemy URL of ``database`` on this cluster; ``driver`` None: a bare ``postgres://``,
        as hosting platforms hand them out."""
        scheme = f"postgresql+{driver}" if driver else "postgres"
        auth = f"postgres:{password}" if password else "postgres"
        params = "&".join(f"{name}={value}" for name, value in query.items())
        return f"{scheme}://{auth}@{host}:{self.port}/{database}" + (f"?{params}" if params else "")

    def dsn(self, database: str = "postgres") -> str:
        """asyncpg's DSN of ``database``, through the Unix socket (no TLS needed, ``local`` is trusted)."""
        return f"postgresql://postgres@/{database}?host={self.root}&port={self.port}"

    async def execute(self, *statements: str, database: str = "postgres") -> None:
        connection = await asyncpg.connect(self.dsn(database))
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    def execute_now(self, *statements: str, database: str = "postgres") -> None:
        """:meth:`execute` from synchronous code (a fixture, outside any event loop)."""
        asyncio.run(self.execute(*statements, database=database))

    async def fetchval(self, query: str, *args: Any, database: str = "postgres") -> Any:
        connection = await asyncpg.connect(self.dsn(database))
        try:
            return await connection.fetchval(query, *args)
        finally:
            await connection.close()

    async def wal_lsn(self) -> int:
        """Where this primary's WAL ends now (asyncpg reads a ``pg_lsn`` as an integer)."""
        return int(await self.fetchval("SELECT pg_current_wal_lsn()"))

    async def caught_up(self, replica: PgCluster, within: float = 30) -> None:
        """Wait until ``replica`` has replayed everything this primary has written so far."""
        target = await self.wal_lsn()
        deadline = time.monotonic() + within
        while True:
            replayed = await replica.fetchval("SELECT pg_last_wal_replay_lsn()")
            behind = None if replayed is None else target - int(replayed)
            if behind is not None and behind <= 0:
                return
            assert time.monotonic() < deadline, f"replica still {behind} bytes behind after {within}s"
            await asyncio.sleep(0.05)


class DelayProxy:
    """A TCP proxy on loopback that holds every byte for ``delay_s`` each way: a replica in another zone.

    Streaming replication through it lags the primary by the delay, as over a real network.
    :meth:`cut` is the network failing with the primary's machine: the bytes in flight never arrive,
    so what the primary committed in the last ``delay_s`` has not reached the replica. Runs its own
    event loop in a thread; :meth:`close` stops it.
    """

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the delay proxy did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._cut:
                raise ConnectionRefusedError
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        """Forward what ``source`` sends, each piece ``delay_s`` after it came, in order."""
        pieces: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await pieces.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data or self._cut:
                    break
                target.write(data)
                await target.drain()

        forwarding = asyncio.ensure_future(forward())
        try:
            while data := await source.read(65536):
                pieces.put_nowait((time.monotonic() + self.delay_s, data))
        except OSError:
            pass
        pieces.put_nowait((time.monotonic() + self.delay_s, b""))
        try:
            await forwarding
        except OSError:
            pass
        finally:
            target.close()

    def cut(self) -> None:
        """Drop every connection and every byte in flight at once, and refuse new connections."""

        async def cut_now() -> None:
            self._cut = True
            for writer in self._writers:
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(cut_now(), self._loop).result(10)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# --- fixtures (tests/conftest.py imports them) ---------------------------------------------------


@pytest.fixture(scope="session")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """A cluster serving TLS with a certificate for ``localhost`` only, refusing unencrypted TCP.

    Its CA is ``tls_cluster.certificates.ca``; connecting to 127.0.0.1 with ``verify-full`` is
    connecting by a name the certificate does not list.
    """
    certificates = Certificates.make(tmp_path_factory.mktemp("tls"))
    cluster = PgCluster.create(tls=certificates, hostssl_only=True)
    yield cluster
    cluster.destroy()


@dataclass(frozen=True)
class Replication:
    """A primary and its streaming replica (a hot standby)."""

    primary: PgCluster
    replica: PgCluster


#: What the replica of :func:`replication` runs with, as docs/deploying.md tells users: the primary keeps
#: the rows a long read on the replica still sees, so no "conflict with recovery" cancels it; feedback
#: every second rather than every 10 s.
REPLICA_SETTINGS = {"hot_standby_feedback": "on", "wal_receiver_status_interval": "'1s'"}


@pytest.fixture(scope="session")
def replication() -> Iterator[Replication]:
    """A primary cluster and a streaming replica of it (``pg_basebackup -R``), for the whole session."""
    primary = PgCluster.create()
    try:
        replica = primary.replica(settings=REPLICA_SETTINGS)
    except BaseException:
        primary.destroy()
        raise
    yield Replication(primary, replica)
    replica.destroy()
    primary.destroy()
