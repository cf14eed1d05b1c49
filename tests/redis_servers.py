"""Redis servers a test starts itself, from Debian's ``redis-server`` and ``redis-sentinel``.

- :class:`RedisNode`: one ``redis-server`` (or ``redis-sentinel``) on a free loopback port, from a
  config file in its own directory, with a password; it can be SIGKILLed and started again.
- :class:`SentinelGroup`: a primary, two replicas and three sentinels monitoring them, as
  production runs Redis: the tests of Sentinel URLs and the failover drills use it. It can find
  the current primary, kill it, ask for a failover, and heal itself back to three healthy nodes
  so that one group (session-scoped: starting it costs a few seconds) serves every test.
- :func:`tls_files`: a CA and a server certificate made with ``openssl``, for a node's ``tls-port``.

Every server binds 127.0.0.1 only and is stopped by whoever started it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

#: Passwords of the test servers: the data nodes' and the sentinels' own. Tests look for both in
#: everything the processes they start wrote.
NODE_PASSWORD = "rdN0de-pw-51f2"
SENTINEL_PASSWORD = "rdSent-pw-c8e0"
SERVICE = "ew-primary"

#: How quickly the sentinels act: a primary silent for this long is subjectively down; with two of
#: three agreeing (the quorum) they elect a leader and promote a replica. Production defaults to 30 s.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 6000
#: How often each sentinel reads INFO from the replicas (10 s by default). Their view of a replica
#: was up to 10 s old: a failover asked for just after one was re-attached picked it by its old role,
#: and another sentinel demoted it mid-promotion. (Set with SENTINEL DEBUG, Redis 7.0's.)
INFO_PERIOD_MS = 1000


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check: Any, within: float, what: str, poll: float = 0.05) -> float:
    """Call ``check`` until it returns true; the seconds it took. AssertionError after ``within`` s."""
    start = time.monotonic()
    last: Exception | None = None
    while True:
        try:
            if check():
                return time.monotonic() - start
        except (redis.exceptions.RedisError, OSError) as exc:
            last = exc
        assert time.monotonic() - start < within, f"{what} not within {within:g} s (last error: {last!r})"
        time.sleep(poll)


@dataclass(frozen=True)
class TlsFiles:
    """A CA, and a server certificate it signed for 127.0.0.1, with the server's key."""

    ca: Path
    cert: Path
    key: Path


def tls_files(directory: Path, name: str = "redis") -> TlsFiles:
    """Make a CA and a server certificate for 127.0.0.1 with ``openssl``, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    cert, key, csr = directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    days = ["-days", "2"]
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", *days, "-subj", f"/CN={name} test CA", "-keyout",
        str(ca_key), "-out", str(ca))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out",
        str(csr))  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", *days,
        "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return TlsFiles(ca, cert, key)


class RedisNode:
    """One ``redis-server`` (``sentinel=True``: ``redis-sentinel``) process of a test."""

    def __init__(
        self,
        workdir: Path,
        config: Iterable[str] = (),
        *,
        password: str | None = NODE_PASSWORD,
        sentinel: bool = False,
        port: int | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.sentinel = sentinel
        self.tls = tls
        self.config = list(config)
        self.process: subprocess.Popen[bytes] | None = None
        self.conf = self.workdir / ("sentinel.conf" if sentinel else "redis.conf")
        self.conf.write_text("\n".join(self._base_config() + self.config) + "\n")

    def _base_config(self) -> list[str]:
        if self.tls:
            ports = ["port 0", f"tls-port {self.port}", "tls-auth-clients no"]
            ports += [f"tls-cert-file {self.tls.cert}", f"tls-key-file {self.tls.key}"]
            ports += [f"tls-ca-cert-file {self.tls.ca}"]
        else:
            ports = [f"port {self.port}"]
        lines = [
            *ports,
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            f"logfile {self.workdir / 'redis.log'}",
            "daemonize no",
        ]
        if not self.sentinel:
            lines += ['save ""', "appendonly no", "repl-diskless-sync yes", "repl-diskless-sync-delay 0"]
        if self.password:
            lines.append(f"requirepass {self.password}")
        return lines

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **options: Any) -> redis.Redis:
        if self.tls:
            options |= {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2, **options
        )

    def start(self, timeout: float = 20) -> None:
        """Start the process (its config file as the sentinels or Redis last rewrote it); wait for PING."""
        assert not self.running, "already running"
        program = "redis-sentinel" if self.sentinel else "redis-server"
        self.process = subprocess.Popen(
            [program, str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = self.client()
        try:

            def answers() -> bool:
                assert self.running, self.log()[-2000:]
                try:
                    return bool(client.ping())
                except redis.exceptions.BusyLoadingError:
                    return False

            wait_until(answers, timeout, f"{program} on port {self.port}")
        finally:
            client.close()

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; what a crash or an OOM kill does."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        self.kill()


class SentinelGroup:
    """A primary, two replicas and three sentinels on loopback, as Sentinel-managed Redis runs.

    The sentinels require :data:`SENTINEL_PASSWORD`, the nodes :data:`NODE_PASSWORD`; the sentinels
    act within :data:`DOWN_AFTER_MS`, so a failover takes a few seconds.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        ports = [free_port() for _ in range(3)]
        first = ports[0]
        replica_config = [f"replicaof 127.0.0.1 {first}"]
        self.nodes = [
            RedisNode(
                workdir / f"node-{n}",
                [f"masterauth {NODE_PASSWORD}", *(replica_config if n else [])],
                port=port,
            )
            for n, port in enumerate(ports)
        ]
        self.sentinels = [
            RedisNode(
                workdir / f"sentinel-{n}",
                [
                    f"sentinel monitor {SERVICE} 127.0.0.1 {first} 2",
                    f"sentinel auth-pass {SERVICE} {NODE_PASSWORD}",
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {SERVICE} 2",
                    f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
                ],
                password=SENTINEL_PASSWORD,
                sentinel=True,
            )
            for n in range(3)
        ]

    def url(self, database: int = 0, scheme: str = "redis+sentinel") -> str:
        """The Sentinel URL of this group: every sentinel, the service, both passwords."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return (
            f"{scheme}://:{NODE_PASSWORD}@{hosts}/{SERVICE}/{database}?sentinel_password={SENTINEL_PASSWORD}"
        )

    @property
    def secrets(self) -> list[str]:
        return [NODE_PASSWORD, SENTINEL_PASSWORD]

    def start(self) -> None:
        """Start the nodes and the sentinels, and wait until the group is healthy.

        If any of it fails (redis-sentinel not installed, a port taken), whatever did start is
        stopped: a failed start left redis-server processes running after the run.
        """
        try:
            for node in self.nodes:
                node.start()
            for sentinel in self.sentinels:
                self._start_sentinel(sentinel)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _start_sentinel(sentinel: RedisNode) -> None:
        sentinel.start()
        client = sentinel.client()
        try:
            client.execute_command("SENTINEL", "DEBUG", "info-period", INFO_PERIOD_MS)
        finally:
            client.close()

    def stop(self) -> None:
        for process in [*self.sentinels, *self.nodes]:
            process.stop()

    # --- what the sentinels say ---------------------------------------------------------------------

    def _ask(self, *command: Any) -> Any:
        """``command`` on the first sentinel that answers."""
        last: Exception | None = None
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            client = sentinel.client(decode_responses=True)
            try:
                return client.execute_command(*command)
            except (redis.exceptions.RedisError, OSError) as exc:
                last = exc
            finally:
                client.close()
        raise AssertionError(f"no sentinel answered {command[0]} {command[1]}: {last!r}")

    def primary_port(self) -> int:
        """The port of the primary the sentinels name now."""
        _host, port = self._ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def primary(self) -> RedisNode:
        port = self.primary_port()
        return next(node for node in self.nodes if node.port == port)

    def replicas(self) -> list[RedisNode]:
        port = self.primary_port()
        return [node for node in self.nodes if node.port != port]

    def _sentinel_view(self, sentinel: RedisNode) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        client = sentinel.client(decode_responses=True)
        try:
            state = client.execute_command("SENTINEL", "MASTER", SERVICE)
            replicas = client.execute_command("SENTINEL", "REPLICAS", SERVICE)
        finally:
            client.close()
        as_dict = lambda r: dict(zip(r[::2], r[1::2], strict=True)) if isinstance(r, list) else r  # noqa: E731
        return as_dict(state), [as_dict(r) for r in replicas]

    def _agreed_and_healthy(self) -> bool:
        """Every sentinel names the same live primary and sees both replicas and the other two sentinels;
        the primary has both replicas online."""
        if not all(process.running for process in [*self.nodes, *self.sentinels]):
            return False
        ports = set()
        for sentinel in self.sentinels:
            state, replicas = self._sentinel_view(sentinel)
            if any(flag in state["flags"] for flag in ("s_down", "o_down", "failover")):
                return False
            if int(state["num-other-sentinels"]) != 2:
                return False
            synced = [
                r
                for r in replicas
                if "s_down" not in r["flags"]
                and r["master-link-status"] == "ok"
                and r["role-reported"] == "slave"
                and r["master-port"] == state["port"]
            ]
            if len(synced) != 2:
                return False
            ports.add(int(state["port"]))
        if len(ports) != 1:
            return False
        (port,) = ports
        client = next(node for node in self.nodes if node.port == port).client(decode_responses=True)
        try:
            info = client.info("replication")
        finally:
            client.close()
        online = [info.get(f"slave{n}", {}).get("state") for n in range(int(info["connected_slaves"]))]
        return info["role"] == "master" and online == ["online", "online"]

    def wait_healthy(self, within: float = 60) -> float:
        """Wait until the group is whole: one primary, two replicas in sync, three sentinels agreeing."""
        return wait_until(self._agreed_and_healthy, within, "the Sentinel group healthy", poll=0.1)

    def heal(self, within: float = 60) -> float:
        """Start every killed node and sentinel again; wait until the group is healthy. Seconds taken.

        A former primary started again believes it is still the primary; the sentinels would demote
        it only after some 10 s (their INFO period), so it is told to replicate the current one here.
        """
        start = time.monotonic()
        if self._agreed_and_healthy():
            return 0.0
        for sentinel in self.sentinels:
            if not sentinel.running:
                self._start_sentinel(sentinel)
        for node in self.nodes:
            if not node.running:
                node.start()
        wait_until(lambda: self.primary() is not None, within, "the sentinels to name a primary")
        primary = self.primary()
        for node in self.nodes:
            if node is primary:
                continue
            client = node.client(decode_responses=True)
            try:
                if client.info("replication")["role"] == "master":
                    client.execute_command("REPLICAOF", "127.0.0.1", primary.port)
            finally:
                client.close()
        self.wait_healthy(within)
        return time.monotonic() - start

    # --- faults -------------------------------------------------------------------------------------

    def kill_primary(self) -> RedisNode:
        """SIGKILL the current primary; return it (to start again later)."""
        primary = self.primary()
        primary.kill()
        return primary

    def failover(self) -> RedisNode:
        """``SENTINEL FAILOVER``: the sentinels promote a replica while the primary still runs."""
        primary = self.primary()
        self._ask("SENTINEL", "FAILOVER", SERVICE)
        return primary

    def wait_promoted(self, old: RedisNode, within: float = 30) -> float:
        """Seconds until the sentinels name a primary other than ``old`` and it accepts writes."""

        def promoted() -> bool:
            port = self.primary_port()
            if port == old.port:
                return False
            node = next(node for node in self.nodes if node.port == port)
            client = node.client(decode_responses=True)
            try:
                return bool(client.info("replication")["role"] == "master")
            finally:
                client.close()

        return wait_until(promoted, within, "a new primary")


# --- fixtures (imported by tests/conftest.py) -----------------------------------------------------


@pytest.fixture(scope="session")
def sentinel_group_of_the_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """One Sentinel group for the whole run: starting one takes a few seconds."""
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel-group"))
    group.start()
    yield group
    group.stop()


@pytest.fixture
def sentinel_group(sentinel_group_of_the_run: SentinelGroup) -> SentinelGroup:
    """The run's Sentinel group, whole: what an earlier test killed is started again (and demoted)."""
    sentinel_group_of_the_run.heal()
    return sentinel_group_of_the_run
