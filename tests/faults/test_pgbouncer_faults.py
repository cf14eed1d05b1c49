"""Through one PgBouncer in transaction mode: 24 workers on a pool of 10 server connections, and PgBouncer
killed and restarted mid-load.

Every worker runs with ``EVENTWORKER_DB_POOLER=transaction`` and reaches the test database only through
the test's own ``pgbouncer`` (tests/pgbouncer.py). The checks read the database directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest
from conftest import PG_URL
from faults.harness import PG_PASSWORD, Ledger, Rounds, log_lines, started, stored_exactly_once
from pgbouncer import Console, PgBouncer
from support import WorkerProcess

from worker.config import load_settings
from worker.db.engine import Database

pytestmark = pytest.mark.faults

#: Server connections PgBouncer may open to the database: fewer than the workers.
POOL = 10
#: The application name of the checks' own connections (straight to PostgreSQL, not counted).
CHECKER = "ew-pgbouncer-check"


@pytest.fixture
def bouncer():
    """This test's PgBouncer: transaction pooling, ``POOL`` server connections, room for every client."""
    server = PgBouncer(PG_URL, pool_size=POOL, max_client_conn=1000).start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def checked(rig) -> AsyncIterator[Database]:
    """The rig's database, read straight from PostgreSQL under :data:`CHECKER`'s name."""
    database = Database.from_settings(load_settings(database_url=rig.database_url, application_name=CHECKER))
    try:
        yield database
    finally:
        await database.dispose()


def pooled(rig, bouncer: PgBouncer, **extra: str) -> dict[str, str]:
    """A worker's settings through ``bouncer``: the URL (with the tier's password) and the pooler."""
    return {
        "DATABASE_URL": bouncer.url(rig.database, password=PG_PASSWORD),
        "EVENTWORKER_DB_POOLER": "transaction",
        **extra,
    }


async def start_at_once(rig, count: int, **extra: str) -> list[WorkerProcess]:
    """Start ``count`` workers together (one after the other would take as long as all their imports)."""
    processes = []
    for _ in range(count):
        process = WorkerProcess(rig.env(**extra), rig.tmp / f"worker-{len(rig.workers)}.log")
        rig.workers.append(process)
        processes.append(process)
    for process in processes:
        await started(process, within=120)
    return processes


@dataclass
class Connections:
    """Samples, while the load runs, of the server connections to the test database.

    Two views: PgBouncer's (``SHOW SERVERS``, and ``SHOW POOLS`` for its clients) and PostgreSQL's
    (``pg_stat_activity``, the checks' own connections left out).
    """

    bouncer: PgBouncer
    database: str
    samples: int = 0
    servers: list[int] = field(default_factory=list)
    backends: list[int] = field(default_factory=list)
    clients: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        admin = await asyncpg.connect(PG_URL)
        try:
            async with self.bouncer.console() as console:
                while not stop.is_set():
                    await self._sample(admin, console)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.05)
        finally:
            await admin.close()

    async def _sample(self, admin: asyncpg.Connection, console: Console) -> None:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
            " AND backend_type = 'client backend' AND application_name <> $2"
        )
        self.backends.append(int(await admin.fetchval(query, self.database, CHECKER)))
        servers = await console.show("SERVERS")
        self.servers.append(sum(1 for row in servers if row["database"] == self.database))
        for row in await console.show("POOLS"):
            if row["database"] == self.database:
                self.clients.append(int(row["cl_active"]) + int(row["cl_waiting"]))
                self.waiting.append(int(row["cl_waiting"]))
        self.samples += 1

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[Connections]:
        stop = asyncio.Event()
        task = asyncio.create_task(self.run(stop))
        try:
            yield self
        finally:
            stop.set()
            await task

    def most(self, values: list[int]) -> int:
        return max(values, default=0)


async def test_24_workers_through_one_pool_of_10(rig, fault_report, soak, bouncer):
    """24 worker processes (up to 240 client connections) share PgBouncer's 10 server connections while
    they ingest: every event stored once, and neither PgBouncer nor PostgreSQL ever shows more than 10
    server connections to the database."""
    workers = 24
    # Each worker polls Redis every 0.1 s: at arq's 0.01 s the 24 of them would take the two cores.
    await start_at_once(rig, workers, **pooled(rig, bouncer, EVENTWORKER_POLL_DELAY="0.1"))
    ledger = Ledger()
    began = time.monotonic()
    watch = Connections(bouncer, rig.database)
    async with checked(rig) as db, watch.sampling():
        async with rig.stream(ledger, batch_size=250, pause=0.005) as stream:
            await stream.confirmed(80, within=60)
            deadline = time.monotonic() + soak
            while time.monotonic() < deadline:  # soak: keep the load on
                await stream.more(20, within=60)
        storage = await stored_exactly_once(db, ledger, within=120)
        drained = time.monotonic() - began
    per_worker = {line["worker_id"] for line in rig.log_lines("ingest.stored")}
    assert all(worker.process.poll() is None for worker in rig.workers), "a worker died"
    assert watch.samples >= 3, "the load ended before the connections were sampled"
    assert watch.most(watch.servers) <= POOL, f"PgBouncer held {watch.most(watch.servers)} server connections"
    assert watch.most(watch.backends) <= POOL, f"PostgreSQL saw {watch.most(watch.backends)} connections"
    assert watch.most(watch.backends) > 0, "no server connection was ever seen: the sampling proved nothing"
    assert watch.most(watch.clients) > POOL, "fewer clients than server connections: no pooling was needed"
    fault_report.record(
        f"{workers} workers through one PgBouncer pool of {POOL} (transaction mode)",
        ledger,
        storage,
        recovery_s=drained,
        note=f"server connections at most {watch.most(watch.servers)} (SHOW SERVERS) /"
        f" {watch.most(watch.backends)} (pg_stat_activity) over {watch.samples} samples; up to"
        f" {watch.most(watch.clients)} client connections, {watch.most(watch.waiting)} waiting;"
        f" {len(per_worker)} of {workers} workers stored batches",
    )


async def test_pgbouncer_killed_and_restarted_mid_load(rig, fault_report, soak, bouncer):
    """PgBouncer SIGKILLed while jobs run and started again a second later, repeatedly: every connection
    through it dies at once; the jobs are retried and the workers reconnect by themselves. Nothing is
    stored twice, and nothing confirmed is lost (a job whose commit reached PostgreSQL but whose answer
    died with PgBouncer is run again and finds its events stored)."""
    workers = await start_at_once(rig, 3, **pooled(rig, bouncer))
    ledger = Ledger()
    restarts = Rounds(2, soak)
    async with checked(rig) as db:
        async with rig.stream(ledger, batch_size=200, pause=0.05) as stream:
            for _ in restarts:
                await stream.more(3)
                await stream.running(within=2)  # kill while a job of ours runs
                await asyncio.to_thread(bouncer.restart, 1.0)
                restarted_at = time.monotonic()
                await asyncio.sleep(2.0)
            await stream.more(5)  # the producer goes on after the last restart
        storage = await stored_exactly_once(db, ledger, within=60)
        recovery = time.monotonic() - restarted_at
    assert all(worker.process.poll() is None for worker in workers), "a worker died"
    retries = [line for worker in workers for line in log_lines(worker.output(), "job.retry")]
    assert retries, "no job met the restart: the test proved nothing"
    reasons = {line["reason"] for line in retries}
    assert reasons <= {"database_unavailable"}, [
        line for line in retries if line["reason"] != "database_unavailable"
    ]
    retried = len({line["job_id"] for line in retries})
    fault_report.record(
        f"PgBouncer killed and restarted x{restarts.done} (down 1 s)",
        ledger,
        storage,
        recovery_s=recovery,
        note=f"{len(retries)} tries of {retried} jobs retried as database_unavailable;"
        " 0 lost: a cut job rolled back or had committed, its re-run stored only what was missing;"
        f" same {len(workers)} worker processes throughout",
    )
