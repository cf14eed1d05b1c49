"""The PostgreSQL primary fails over while three workers ingest: they find the promoted standby by themselves.

Each drill starts a primary and a streaming replica of its own (``pg_basebackup -R``), points the
workers at both through one multi-host URL as providers hand them out
(``postgresql://u:p@primary:p1,standby:p2/db?target_session_attrs=read-write``), stops the primary
the way a crash does (``pg_ctl stop -m immediate``: no shutdown, no last WAL sent) and promotes the
standby (``pg_ctl promote``). Connections to the dead primary are refused, the standby is refused
for writes until it is promoted; jobs that meet neither wait (``database_unavailable``, no try used)
and go on on the new primary.

- **Asynchronous replication** (PostgreSQL's default): a job whose commit the old primary
  acknowledged, but whose WAL had not reached the standby when the primary died, is lost: the job
  is done in arq's eyes and its events are on the old primary's disk only. The drill counts those
  events and then starts the old primary alone to find each of them there: the loss is exactly the
  replication gap, nothing else.
- **Synchronous replication** (``synchronous_standby_names = '*'``, ``synchronous_commit =
  remote_apply``): a commit is acknowledged once the standby has applied it, so nothing
  acknowledged can be lost: the drill asserts each event stored exactly once. ``pg_basebackup``
  copies ``synchronous_standby_names`` into the standby, whose every commit would then wait, once
  promoted, for a standby of its own that never comes: the drill clears it there, as a user must.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from faults.harness import PG_PASSWORD, Ledger, check_storage, in_progress, wait_stored
from pgcluster import DelayProxy, PgCluster

from worker.config import load_settings
from worker.db import schema
from worker.db.engine import Database

pytestmark = pytest.mark.faults

WORKERS = 3
#: One-way delay between the primary and the standby (a standby in another zone; on loopback WAL
#: arrives within microseconds and the window in which a commit can be lost is too small to see).
REPLICATION_DELAY_S = 0.05
#: What makes a commit wait until the standby has applied it; set on the primary only.
SYNCHRONOUS = {"synchronous_standby_names": "'*'", "synchronous_commit": "remote_apply"}


@dataclass
class Pair:
    """A primary, its standby, and a database on them."""

    primary: PgCluster
    standby: PgCluster
    database: str
    network: DelayProxy
    """The link the standby streams through."""

    def url(self) -> str:
        """The workers' DATABASE_URL: both hosts in libpq's form, the primary first, writes wanted."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://postgres:{PG_PASSWORD}@{hosts}/{self.database}?target_session_attrs=read-write"

    async def stored(self, cluster: PgCluster, source: str) -> int:
        query = "SELECT count(*) FROM events WHERE source = $1"
        return int(await cluster.fetchval(query, source, database=self.database))


def _pair(synchronous: bool) -> Iterator[Pair]:
    primary = PgCluster.create(settings=SYNCHRONOUS if synchronous else None)
    standby = proxy = None
    try:
        proxy = DelayProxy(primary.port, REPLICATION_DELAY_S)
        # The trap: the copy of postgresql.conf would make the promoted standby wait for a standby.
        standby = primary.replica(settings={"synchronous_standby_names": "''"}, through_port=proxy.port)
        database = f"ew_failover_{uuid.uuid4().hex[:8]}"
        primary.execute_now(f'CREATE DATABASE "{database}"')

        async def migrate() -> None:
            db = Database.from_settings(load_settings(database_url=primary.url(database)))
            try:
                await schema.upgrade(db.engine)
            finally:
                await db.dispose()
            await primary.caught_up(standby)

        asyncio.run(migrate())
        yield Pair(primary, standby, database, proxy)
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()
        if proxy is not None:
            proxy.close()


@pytest.fixture
def async_pair() -> Iterator[Pair]:
    """A primary and a standby with asynchronous replication (PostgreSQL's default)."""
    yield from _pair(synchronous=False)


@pytest.fixture
def sync_pair() -> Iterator[Pair]:
    """A primary whose commits wait until its standby has applied them (remote_apply)."""
    yield from _pair(synchronous=True)


async def _until_resumed(pair: Pair, source: str, since: float, within: float = 60) -> float:
    """Seconds from ``since`` until the promoted standby stores more events of ``source`` than it held
    as it became the primary (the workers write to it)."""
    held = await pair.stored(pair.standby, source)
    while await pair.stored(pair.standby, source) <= held:
        assert time.monotonic() - since < within, f"ingestion did not resume within {within:.0f} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - since


@dataclass
class Drill:
    ledger: Ledger
    resumed_s: float
    promoted_s: float
    retries: list[dict[str, object]]


async def _fail_over(rig, pair: Pair, soak: float) -> Drill:
    """Three workers ingest from a streaming producer; the primary dies mid-load, the standby is
    promoted; the producer goes on; returns once the stream has stopped."""
    rig.database_url = pair.url()
    rig.database = pair.database
    workers = await rig.start_workers(WORKERS, EVENTWORKER_DB_CONNECT_TIMEOUT="2")
    ledger = Ledger()
    load_s = max(2.0, soak / 2)
    async with rig.stream(ledger, batch_size=100, pause=0.02) as stream:
        await stream.confirmed(5)
        await asyncio.sleep(load_s)
        await stream.running(within=5)  # the primary dies while a job of ours runs
        stopped = time.monotonic()
        pair.network.cut()  # the primary's machine is lost: with it, the WAL on its way to the standby
        await asyncio.to_thread(pair.primary.stop, "immediate")
        await asyncio.to_thread(pair.standby.promote)
        promoted_s = time.monotonic() - stopped
        resumed_s = await _until_resumed(pair, ledger.source, stopped)
        await asyncio.sleep(load_s)
    for worker in workers:
        assert worker.process.poll() is None, f"a worker died:\n{worker.output()[-2000:]}"
    return Drill(ledger, resumed_s, promoted_s, rig.log_lines("job.retry"))


async def _drained(rig, ledger: Ledger, within: float = 60) -> None:
    """Wait until no job of ``ledger`` is queued or running: what is not stored by then never will be."""
    deadline = time.monotonic() + within
    async with rig.producer() as producer:
        while await producer.redis.zcard(rig.queue) or await in_progress(producer.redis, ledger.jobs):
            assert time.monotonic() < deadline, f"jobs still queued or running after {within:.0f} s"
            await asyncio.sleep(0.1)


async def _lost_found_on_the_old_primary(rig, pair: Pair, lost: list[str], source: str) -> int:
    """Start the old primary alone (the workers stopped first: it would take writes again) and count
    the lost events it holds; stop it again."""
    for worker in rig.workers:
        worker.kill()
    await asyncio.to_thread(pair.primary.start)
    try:
        query = "SELECT count(*) FROM events WHERE source = $1 AND event_id = ANY($2::text[])"
        return int(await pair.primary.fetchval(query, source, lost, database=pair.database))
    finally:
        await asyncio.to_thread(pair.primary.stop, "fast")


async def test_failover_with_asynchronous_replication(async_pair, rig, fault_report, soak):
    """Workers reconnect to the promoted standby by themselves; nothing is stored twice; what is lost is
    exactly what the old primary acknowledged and never streamed, every event of it on the old primary."""
    drill = await _fail_over(rig, async_pair, soak)
    await _drained(rig, drill.ledger)
    storage = await check_storage(rig.db(), drill.ledger)
    assert storage.duplicated == 0
    assert not storage.unexpected
    assert not storage.changed
    assert storage.failed_jobs == 0
    assert {line["reason"] for line in drill.retries} <= {"database_unavailable"}, drill.retries[:3]
    found = await _lost_found_on_the_old_primary(rig, async_pair, storage.lost, drill.ledger.source)
    assert found == len(storage.lost), f"{len(storage.lost) - found} lost events are on neither server"
    fault_report.record(
        f"PostgreSQL primary lost (immediate stop, network cut), standby promoted; {WORKERS} workers,"
        " async replication",
        drill.ledger,
        storage,
        recovery_s=drill.resumed_s,
        note=f"{len(storage.lost)} lost: acknowledged by the old primary, on their way to the standby"
        f" ({REPLICATION_DELAY_S * 1000:.0f} ms away) when it died (all {found} on its disk afterwards);"
        f" promoted after {drill.promoted_s:.1f} s; {len(drill.retries)} tries waited (database_unavailable);"
        " same worker processes throughout",
    )


async def test_failover_with_synchronous_replication_loses_nothing(sync_pair, rig, fault_report, soak):
    """``synchronous_commit = remote_apply`` with a synchronous standby: every event stored exactly once."""
    drill = await _fail_over(rig, sync_pair, soak)
    db = rig.db()
    storage = await wait_stored(db, drill.ledger, within=60)
    storage.assert_exactly_once()
    assert {line["reason"] for line in drill.retries} <= {"database_unavailable"}, drill.retries[:3]
    fault_report.record(
        f"PostgreSQL primary lost (immediate stop, network cut), standby promoted; {WORKERS} workers,"
        " synchronous_commit=remote_apply",
        drill.ledger,
        storage,
        recovery_s=drill.resumed_s,
        note=f"0 lost: each commit waited for the standby ({REPLICATION_DELAY_S * 1000:.0f} ms away) to apply"
        f" it; promoted after {drill.promoted_s:.1f} s; {len(drill.retries)} tries waited"
        " (database_unavailable)",
    )
