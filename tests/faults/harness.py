"""Tools of the fault-injection tier: what the producer sent, what the database holds, and the faults.

- :class:`RedisServer`: a redis-server of the test's own on a free loopback port, with a real
  password, which the test may kill (SIGKILL) and start again. The shared Redis is never touched.
- :class:`Ledger`: every input a producer handed to Redis, split into valid events (by identity),
  repeats and invalid inputs, so the database can be checked against it exactly.
- :class:`Stream`: a producer task enqueuing batches until told to stop, noting each confirmed one.
- :func:`check_storage` / :func:`wait_stored` / :func:`stored_exactly_once`: the database compared
  with a ledger.
- :func:`terminate_backends`, :func:`events_locked`, :func:`in_progress`, :func:`exit_code`: the
  faults' own instruments; :class:`Rounds`: how often a test repeats its fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import redis
import redis.asyncio as aioredis
from conftest import PG_URL
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from support import WorkerProcess

from worker.db.engine import Database
from worker.db.models import DeadLetter, Event, FailedJob
from worker.errors import EnqueueError
from worker.protocol.producer import EventProducer

#: Passwords in every URL of this tier. PostgreSQL's trust auth accepts any; our Redis requires its own.
PG_PASSWORD = "pgF4ult-pw-7e1d"
REDIS_PASSWORD = "rdF4ult-pw-93ac"
SECRETS = (PG_PASSWORD, REDIS_PASSWORD)


def pg_dsn(database: str) -> str:
    """asyncpg's DSN for ``database`` on the test server (for the test's own admin connections)."""
    return make_url(PG_URL).set(database=database).render_as_string(hide_password=False)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """``redis-server`` on a port of its own, for tests that kill and restart Redis."""

    def __init__(self, workdir: Path, *, password: str | None = REDIS_PASSWORD, appendonly: bool = False):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
        command += ["--daemonize", "no"]
        if self.appendonly:
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            command += ["--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        return command

    def start(self, timeout: float = 20) -> None:
        """Start the server and wait until it answers (and, with AOF, has loaded its data)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self.process.poll() is None, (self.workdir / "redis.log").read_text(errors="replace")
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass
                assert time.monotonic() < deadline, f"redis-server on {self.port} did not answer"
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; what a crash or an OOM kill does."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()


class Rounds:
    """The rounds of a fault: at least ``at_least`` of them, and more until ``soak`` seconds have passed.

    Iterating runs them, yielding 0, 1, 2, ...; :attr:`done` counts the rounds begun.
    """

    def __init__(self, at_least: int, soak: float) -> None:
        self.at_least = at_least
        self.soak = soak
        self.done = 0

    def __iter__(self) -> Iterator[int]:
        deadline = time.monotonic() + self.soak
        while self.done < self.at_least or time.monotonic() < deadline:
            self.done += 1
            yield self.done - 1


def unique_source() -> str:
    return f"/faults/{uuid.uuid4().hex[:10]}"


def _is_event(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("type"), str)


@dataclass
class Ledger:
    """What a producer handed to Redis, to compare the database with.

    Each batch holds fresh events, optionally one invalid input, and (after the first) one repeat of
    an event sent before, which must be counted as a duplicate and stored once. A batch whose enqueue
    failed is *uncertain*: its events may be stored or not, but never twice.
    """

    source: str = field(default_factory=unique_source)
    confirmed: dict[str, list[Any]] = field(default_factory=dict)
    uncertain: list[list[Any]] = field(default_factory=list)
    _next: int = 0

    def event(self, n: int) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": f"e{n}",
            "source": self.source,
            "type": "com.example.fault",
            "time": "2026-01-02T03:04:05.123456Z",
            "data": {"n": n, "text": f"payload {n} ünïcode ✓", "list": [n, n * 2]},
        }

    def batch(self, size: int, *, invalid: bool = False, repeat: bool = True, overlap: int = 0) -> list[Any]:
        """A new batch: ``size`` fresh events, then an invalid input and a repeat when asked.

        ``overlap``: the batch starts with that many of the events sent just before, so that jobs
        running at once race to store the same identities.
        """
        start, self._next = self._next, self._next + size
        batch: list[Any] = [self.event(n) for n in range(max(0, start - overlap), start + size)]
        if invalid:
            batch.append({"specversion": "1.0", "id": f"bad{start}", "source": self.source, "type": start})
        if repeat and start:
            batch.append(self.event(start // 2))
        return batch

    def confirm(self, job_id: str, batch: list[Any]) -> None:
        """The enqueue of ``batch`` returned ``job_id``: Redis has it."""
        self.confirmed[job_id] = batch

    def refuse(self, batch: list[Any]) -> None:
        """The enqueue of ``batch`` failed: it may or may not have reached Redis."""
        self.uncertain.append(batch)

    @property
    def jobs(self) -> list[str]:
        return list(self.confirmed)

    @property
    def inputs(self) -> int:
        """Inputs in confirmed jobs, repeats and invalid ones included."""
        return sum(len(batch) for batch in self.confirmed.values())

    @property
    def events(self) -> int:
        """Distinct events in confirmed jobs."""
        return len({item["id"] for batch in self.confirmed.values() for item in batch if _is_event(item)})


@dataclass(frozen=True)
class Storage:
    """The database compared with a ledger."""

    expected: int
    stored: int
    duplicated: int
    lost: list[str]
    unexpected: list[str]
    changed: list[str]
    dead_letters: int
    dead_letters_expected: int
    dead_letters_duplicated: int
    dead_letters_unexpected: int
    failed_jobs: int

    @property
    def complete(self) -> bool:
        return not self.lost and self.dead_letters >= self.dead_letters_expected

    def assert_exactly_once(self) -> None:
        assert self.duplicated == 0, f"{self.duplicated} events stored more than once"
        assert not self.lost, f"{len(self.lost)} events lost, e.g. {self.lost[:5]}"
        assert not self.unexpected, f"events nobody sent: {self.unexpected[:5]}"
        assert not self.changed, f"stored content differs from what was sent: {self.changed[:5]}"
        assert self.dead_letters_duplicated == 0, "an invalid input was kept twice"
        assert self.dead_letters_unexpected == 0, "a dead letter for an input that was not invalid"
        assert self.dead_letters == self.dead_letters_expected, (
            f"{self.dead_letters} dead letters, expected {self.dead_letters_expected}"
        )
        assert self.failed_jobs == 0, "a job was recorded as failed"


def _same(sent: dict[str, Any], row: Any) -> bool:
    return (
        row.type == sent["type"]
        and row.data == sent["data"]
        and row.time is not None
        and row.time.isoformat() == "2026-01-02T03:04:05.123456+00:00"
    )


async def check_storage(db: Database, ledger: Ledger, *, may_lose: Collection[str] = ()) -> Storage:
    """Compare the events and dead letters in ``db`` with what ``ledger`` says was sent.

    ``may_lose``: confirmed jobs a fault was allowed to lose (queued in a Redis without persistence).
    """
    async with db.transaction() as session:
        rows = (
            await session.execute(
                select(Event.event_id, Event.type, Event.data, Event.time).where(
                    Event.source == ledger.source
                )
            )
        ).all()
        letters = (await session.scalars(select(DeadLetter.raw))).all()
        failed = int(await session.scalar(select(func.count()).select_from(FailedJob)) or 0)
    required = [batch for job, batch in ledger.confirmed.items() if job not in may_lose]
    allowed = [*ledger.confirmed.values(), *ledger.uncertain]
    sent = {item["id"]: item for batch in allowed for item in batch if _is_event(item)}
    needed = {item["id"] for batch in required for item in batch if _is_event(item)}
    needed_invalid = Counter(
        orjson.dumps(item) for batch in required for item in batch if not _is_event(item)
    )
    any_invalid = {orjson.dumps(item) for batch in allowed for item in batch if not _is_event(item)}
    by_id = Counter(row.event_id for row in rows)
    kept = Counter(bytes(raw) for raw in letters)
    return Storage(
        expected=len(needed),
        stored=len(by_id),
        duplicated=sum(n - 1 for n in by_id.values()),
        lost=sorted(needed - set(by_id)),
        unexpected=sorted(set(by_id) - set(sent)),
        changed=sorted(
            row.event_id for row in rows if row.event_id in sent and not _same(sent[row.event_id], row)
        ),
        dead_letters=sum(min(n, needed_invalid[raw]) for raw, n in kept.items()),
        dead_letters_expected=sum(needed_invalid.values()),
        dead_letters_duplicated=sum(n - 1 for n in kept.values()),
        dead_letters_unexpected=sum(n for raw, n in kept.items() if raw not in any_invalid),
        failed_jobs=failed,
    )


async def wait_stored(
    db: Database, ledger: Ledger, *, within: float, may_lose: Collection[str] = ()
) -> Storage:
    """Poll until every confirmed event and invalid input is in the database, or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        storage = await check_storage(db, ledger, may_lose=may_lose)
        if storage.complete or time.monotonic() > deadline:
            return storage
        await asyncio.sleep(0.1)


async def stored_exactly_once(
    db: Database, ledger: Ledger, *, within: float, may_lose: Collection[str] = ()
) -> Storage:
    """:func:`wait_stored`, then fail unless each event is stored once, as sent, and nothing else."""
    storage = await wait_stored(db, ledger, within=within, may_lose=may_lose)
    storage.assert_exactly_once()
    return storage


class Stream:
    """A producer enqueuing batches one after another until :meth:`stop`, noting which Redis confirmed."""

    def __init__(
        self,
        producer: EventProducer,
        ledger: Ledger,
        *,
        batch_size: int = 50,
        pause: float = 0.01,
        invalid_every: int = 5,
        overlap: int = 0,
    ) -> None:
        self.producer = producer
        self.ledger = ledger
        self.batch_size = batch_size
        self.pause = pause
        self.invalid_every = invalid_every
        self.overlap = overlap
        self.errors: list[str] = []
        self.batches = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Stream:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.batches += 1
            invalid = bool(self.invalid_every) and self.batches % self.invalid_every == 0
            batch = self.ledger.batch(self.batch_size, invalid=invalid, overlap=self.overlap)
            try:
                job_id = await self.producer.emit_batch(batch)
            except EnqueueError as exc:
                self.errors.append(str(exc))
                self.ledger.refuse(batch)
            else:
                self.ledger.confirm(job_id, batch)
            await asyncio.sleep(self.pause)

    async def confirmed(self, jobs: int, within: float = 30) -> None:
        """Wait until at least ``jobs`` batches were confirmed in all."""
        deadline = time.monotonic() + within
        while len(self.ledger.jobs) < jobs:
            assert self._task is not None
            assert not self._task.done(), "the producer stopped"
            assert time.monotonic() < deadline, f"only {len(self.ledger.jobs)} of {jobs} batches confirmed"
            await asyncio.sleep(0.02)

    async def more(self, jobs: int, within: float = 30) -> None:
        """Wait until ``jobs`` more batches than now were confirmed."""
        await self.confirmed(len(self.ledger.jobs) + jobs, within)

    async def running(self, within: float = 5) -> list[str]:
        """Jobs of this stream a worker holds right now, waiting up to ``within`` seconds for one.

        A fault injected once this returns something lands while a job runs: mid-batch.
        """
        deadline = time.monotonic() + within
        while True:
            held = await in_progress(self.producer.redis, self.ledger.jobs)
            if held or time.monotonic() > deadline:
                return held
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def in_progress(redis_client: aioredis.Redis, job_ids: list[str]) -> list[str]:
    """Those of ``job_ids`` a worker holds right now (arq's in-progress lock is set)."""
    if not job_ids:
        return []
    async with redis_client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(f"arq:in-progress:{job_id}")
        held = await pipe.execute()
    return [job_id for job_id, exists in zip(job_ids, held, strict=True) if exists]


async def terminate_backends(admin_dsn: str, database: str) -> list[str]:
    """``pg_terminate_backend`` on every other connection to ``database``; return their states.

    This is what a PostgreSQL restart (or a failover) does to a client: its connections die.
    """
    connection = await asyncpg.connect(admin_dsn)
    try:
        rows = await connection.fetch(
            "SELECT pid, state FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database
        )
        for row in rows:
            await connection.execute("SELECT pg_terminate_backend($1)", row["pid"])
        return [str(row["state"]) for row in rows]
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def events_locked(admin: asyncpg.Connection) -> AsyncIterator[None]:
    """The events table locked against writes for the block, on ``admin``: inserts wait until it ends."""
    lock = admin.transaction()
    await lock.start()
    try:
        await admin.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
        yield
    finally:
        await lock.rollback()


async def backends(admin_dsn: str, like: str) -> list[tuple[str, str]]:
    """(application_name, state) of connections whose application_name matches ``like``."""
    connection = await asyncpg.connect(admin_dsn)
    try:
        rows = await connection.fetch(
            "SELECT application_name, state FROM pg_stat_activity WHERE application_name LIKE $1", like
        )
        return [(str(row["application_name"]), str(row["state"])) for row in rows]
    finally:
        await connection.close()


async def started(process: WorkerProcess, within: float = 30) -> WorkerProcess:
    """Wait, without blocking the event loop (a producer may be streaming), until a worker is up."""
    deadline = time.monotonic() + within
    while "worker.started" not in process.output():
        assert process.process.poll() is None, f"worker exited early:\n{process.output()[-3000:]}"
        assert time.monotonic() < deadline, f"worker did not start:\n{process.output()[-3000:]}"
        await asyncio.sleep(0.05)
    return process


async def exit_code(process: WorkerProcess, *, within: float, failure: str, poll: float = 0.1) -> int:
    """Wait, without blocking the event loop, until a worker exits; ``failure`` after ``within`` s."""
    deadline = time.monotonic() + within
    while process.process.poll() is None:
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(poll)
    return process.process.returncode


def log_lines(output: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of a worker's output whose ``event`` is ``event``."""
    found = []
    for line in output.splitlines():
        if f'"{event}"' not in line:
            continue
        with contextlib.suppress(orjson.JSONDecodeError):
            record = orjson.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
    return found
