"""Fixtures of the fault-injection tier, its soak mode, and the summary printed at the end of the run.

Every test here starts real ``eventworker run`` processes against a fresh PostgreSQL database and a
redis-server of this tier's own (with a real password; the shared Redis is never touched), injects
a fault, and checks what was stored against what the producer sent. Each records one row in the
session's :class:`FaultReport`, printed by :func:`pytest_terminal_summary`.

The drills of the database's side (crashes, database faults, many workers, PgBouncer)
run twice: on ``events`` as one table and partitioned by day (the exactly-once promise then rests on
``event_keys``, not on the table's unique index); the rows of the second say "partitioned events".

Soak mode repeats each fault for longer and adds the slow checks (real cron ticks)::

    python3 dev.py test tests/faults --soak              # 120 s per fault
    EVENTWORKER_SOAK_SECONDS=900 python3 dev.py test tests/faults --soak

Every password put in a URL here is looked for, after each test, in everything the test caused to
be written: worker and command outputs, every Redis key of the tier's server, the failed jobs and
dead letters. None may appear.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import PG_URL, _admin, _fresh_database, pg_database_url
from faults.harness import (
    PG_PASSWORD,
    REDIS_PASSWORD,
    Ledger,
    RedisServer,
    Storage,
    Stream,
    log_lines,
    started,
)
from sqlalchemy import select
from support import WorkerProcess, process_env

from worker.config import load_settings
from worker.db.engine import Database
from worker.db.models import DeadLetter, FailedJob
from worker.protocol.producer import EventProducer

SOAK_VARIABLE = "EVENTWORKER_SOAK_SECONDS"
#: The layouts of ``events`` a drill's database may have: the first is every drill's.
LAYOUTS = ("one table", "partitioned")
#: The modules whose drills also run on the partitioned layout: each stores events under a fault of the
#: database's side, where exactly once is at stake (Redis's and Sentinel's faults do not depend on it).
BOTH_LAYOUTS = frozenset(
    {"test_database_faults", "test_worker_crash", "test_many_workers", "test_pgbouncer_faults"}
)
DEFAULT_SOAK_SECONDS = 120.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        help=f"fault tier: repeat each fault for ${SOAK_VARIABLE} seconds"
        f" (default {DEFAULT_SOAK_SECONDS:.0f}) and run the slow checks",
    )


def soak_seconds(config: pytest.Config) -> float:
    """0 in the CI run; the soak duration per fault with --soak (or EVENTWORKER_SOAK_SECONDS set)."""
    configured = os.environ.get(SOAK_VARIABLE)
    if configured:
        return float(configured)
    return DEFAULT_SOAK_SECONDS if config.getoption("--soak", default=False) else 0.0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "layout" in metafunc.fixturenames and metafunc.module.__name__.rpartition(".")[2] in BOTH_LAYOUTS:
        metafunc.parametrize("layout", LAYOUTS, ids=[name.replace(" ", "-") for name in LAYOUTS])


@pytest.fixture
def layout() -> str:
    """The layout of a drill's ``events``: one table, unless its module runs on both."""
    return LAYOUTS[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    soak = soak_seconds(config)
    for item in items:
        if "faults" not in item.keywords:
            continue
        if soak:
            item.add_marker(pytest.mark.timeout(soak * 2 + 300))
        elif "soak" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="soak mode only (--soak): waits for real cron ticks"))


@pytest.fixture(scope="session")
def soak(pytestconfig: pytest.Config) -> float:
    """Seconds each fault is repeated for: 0 in CI (a few rounds), more in soak mode."""
    return soak_seconds(pytestconfig)


# --- the summary ----------------------------------------------------------------------------------


@dataclass
class FaultRow:
    fault: str
    sent: int
    events: int
    stored: int
    duplicated: int
    lost: int
    dead_letters: str
    recovery_s: float | None
    note: str = ""


@dataclass
class FaultReport:
    """One row per fault test; printed at the end of the run."""

    rows: list[FaultRow] = field(default_factory=list)
    scanned: dict[str, int] = field(default_factory=dict)
    #: The layout of the running drill's ``events`` (set by its database fixture).
    layout: str = LAYOUTS[0]

    def add(self, row: FaultRow) -> None:
        if self.layout != LAYOUTS[0]:
            row.fault = f"{row.fault}, {self.layout} events"
        self.rows.append(row)

    def record(
        self,
        fault: str,
        ledger: Ledger,
        storage: Storage,
        *,
        recovery_s: float | None,
        note: str,
        lost: int | None = None,
    ) -> None:
        """A row for a fault run: what ``ledger`` says was sent against what ``storage`` found.

        ``lost``: the confirmed events missing, unless the test counts them its own way.
        """
        self.add(
            FaultRow(
                fault,
                sent=ledger.inputs,
                events=ledger.events,
                stored=storage.stored,
                duplicated=storage.duplicated,
                lost=len(storage.lost) if lost is None else lost,
                dead_letters=f"{storage.dead_letters}/{storage.dead_letters_expected}",
                recovery_s=recovery_s,
                note=note,
            )
        )

    def count_scan(self, what: str, n: int) -> None:
        self.scanned[what] = self.scanned.get(what, 0) + n

    def lines(self) -> list[str]:
        lines = [
            "| fault | inputs sent | distinct events | stored | duplicated | lost | dead letters | recovery |"
            " notes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in self.rows:
            recovery = "-" if row.recovery_s is None else f"{row.recovery_s:.1f} s"
            lines.append(
                f"| {row.fault} | {row.sent} | {row.events} | {row.stored} | {row.duplicated} | {row.lost}"
                f" | {row.dead_letters} | {recovery} | {row.note} |"
            )
        if self.scanned:
            scanned = ", ".join(f"{n} {what}" for what, n in self.scanned.items())
            lines += ["", f"secrets: none found in {scanned}"]
        return lines


REPORT = pytest.StashKey[FaultReport]()


@pytest.fixture(scope="session")
def fault_report(pytestconfig: pytest.Config) -> FaultReport:
    return pytestconfig.stash.setdefault(REPORT, FaultReport())


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    report = config.stash.get(REPORT, None)
    if report is None or not report.rows:
        return
    terminalreporter.section("faults: sent, stored, duplicated, lost, recovery")
    for line in report.lines():
        terminalreporter.write_line(line)


# --- servers and the rig --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """This tier's own redis-server, with a password; tests use their own queue on it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def pg_database(
    layout: str, request: pytest.FixtureRequest, fault_report: FaultReport
) -> AsyncIterator[str]:
    """A fresh, migrated database whose ``events`` has this drill's layout; dropped afterwards."""
    template = request.getfixturevalue(
        "pg_partitioned_template" if layout == "partitioned" else "pg_template"
    )
    name = await _fresh_database(template)
    fault_report.layout = layout
    try:
        yield name
    finally:
        fault_report.layout = LAYOUTS[0]
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Rig:
    """One test's world: a fresh database, a queue on a password-protected Redis, worker processes."""

    def __init__(self, database: str, redis_url: str, tmp: Path) -> None:
        self.database = database
        self.database_url = pg_database_url(database, password=PG_PASSWORD)
        self.redis_url = redis_url
        self.queue = f"faults:{uuid.uuid4().hex[:10]}"
        self.application_name = f"ew-fault-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.admin_dsn = PG_URL
        self.workers: list[WorkerProcess] = []
        self.outputs: list[tuple[str, str]] = []
        self.secrets: list[str] = [PG_PASSWORD, REDIS_PASSWORD]
        self._dbs: list[Database] = []
        self.redis_servers: list[RedisServer] = []

    def own_redis(self, *, appendonly: bool = False) -> RedisServer:
        """A redis-server of this test alone, to kill and restart; the rig's URLs point to it from now on."""
        server = RedisServer(self.tmp / f"redis-{len(self.redis_servers)}", appendonly=appendonly)
        server.start()
        self.redis_servers.append(server)
        self.redis_url = server.url
        return server

    def env(self, **extra: str) -> dict[str, str]:
        """A worker's or command's environment: this rig's servers, quick polls and back-off, ``extra``."""
        settings = {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "EVENTWORKER_QUEUE_NAME": self.queue,
            "EVENTWORKER_APPLICATION_NAME": self.application_name,
            "EVENTWORKER_POLL_DELAY": "0.01",
            "EVENTWORKER_RETRY_BASE_DELAY": "0.1",
            "EVENTWORKER_RETRY_MAX_DELAY": "1",
            "EVENTWORKER_HEALTH_CHECK_INTERVAL": "1",
        }
        return process_env(**{**settings, **extra})

    async def start_worker(self, **extra: str) -> WorkerProcess:
        """Start ``eventworker run`` with this rig's settings (and ``extra``); return once it is up."""
        process = WorkerProcess(self.env(**extra), self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(process)
        return await started(process)

    async def start_workers(self, count: int, **extra: str) -> list[WorkerProcess]:
        """:meth:`start_worker` ``count`` times, one after the other."""
        return [await self.start_worker(**extra) for _ in range(count)]

    def producer(self, **options: Any) -> EventProducer:
        return EventProducer(self.redis_url, queue_name=self.queue, **options)

    @contextlib.asynccontextmanager
    async def stream(self, ledger: Ledger, **options: Any) -> AsyncIterator[Stream]:
        """A producer of this rig's streaming batches into ``ledger`` for the block (:class:`Stream`)."""
        async with self.producer() as producer, Stream(producer, ledger, **options) as stream:
            yield stream

    def log_lines(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines ``event`` of every worker this rig started, in the order they started."""
        return [line for worker in self.workers for line in log_lines(worker.output(), event)]

    def rerun_jobs(self) -> set[str]:
        """Jobs that stored events on a try after their first: cut off or handed back, then run again."""
        return {line["job_id"] for line in self.log_lines("ingest.stored") if line["job_try"] > 1}

    def db(self) -> Database:
        database = Database.from_settings(load_settings(database_url=self.database_url))
        self._dbs.append(database)
        return database

    def cli(self, *args: str, stdin: bytes | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=self.env(**extra),
            input=None if stdin is None else stdin.decode(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.outputs.append((" ".join(args), done.stdout + done.stderr))
        return done

    async def close(self) -> None:
        for process in self.workers:
            process.kill()
        for database in self._dbs:
            await database.dispose()

    def redis_texts(self, shared: RedisServer) -> list[str]:
        """Every value in the tier's Redis and in this test's own servers (started again if down)."""
        texts = _redis_texts(shared.url)
        for server in self.redis_servers:
            if server.process is None or server.process.poll() is not None:
                server.start()
            texts += _redis_texts(server.url)
            server.kill()
        return texts


def _redis_texts(url: str) -> list[str]:
    """Every value of every key on the tier's Redis, as text."""
    client = redis.Redis.from_url(url)
    texts = []
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"string":
                value: Any = client.get(key)
            elif kind == b"hash":
                value = client.hgetall(key)
            elif kind == b"zset":
                value = client.zrange(key, 0, -1)
            elif kind == b"list":
                value = client.lrange(key, 0, -1)
            elif kind == b"set":
                value = client.smembers(key)
            else:
                continue
            texts.append(f"{key!r} {value!r}")
    finally:
        client.close()
    return texts


async def _database_texts(database_url: str) -> list[str]:
    db = Database.from_settings(load_settings(database_url=database_url))
    try:
        async with db.transaction() as session:
            failed = (await session.scalars(select(FailedJob))).all()
            letters = (await session.scalars(select(DeadLetter))).all()
            return [f"{row.job_name} {row.args!r} {row.error}" for row in failed] + [
                f"{row.job_name} {row.raw!r} {row.errors!r}" for row in letters
            ]
    finally:
        await db.dispose()


@pytest.fixture
async def rig(
    pg_database: str, fault_redis: RedisServer, tmp_path: Path, fault_report: FaultReport
) -> AsyncIterator[Rig]:
    """This test's database, queue and workers; afterwards, no password anywhere it wrote."""
    setup = Rig(pg_database, fault_redis.url, tmp_path)
    try:
        yield setup
    finally:
        await setup.close()
    texts = [(f"worker log {w.log.name}", w.output()) for w in setup.workers]
    texts += [(f"command {name}", output) for name, output in setup.outputs]
    try:
        redis_values = setup.redis_texts(fault_redis)
    finally:
        for server in setup.redis_servers:
            server.kill()
    rows = await _database_texts(setup.database_url)
    texts += [("redis", value) for value in redis_values] + [("database row", row) for row in rows]
    for where, text in texts:
        for secret in setup.secrets:
            assert secret not in text, f"a password appears in {where}"
    fault_report.count_scan("worker logs", len(setup.workers))
    fault_report.count_scan("worker log lines", sum(w.output().count("\n") for w in setup.workers))
    fault_report.count_scan("command outputs", len(setup.outputs))
    fault_report.count_scan("Redis values", len(redis_values))
    fault_report.count_scan("failed-job and dead-letter rows", len(rows))
