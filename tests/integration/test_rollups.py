"""Incremental rollups on every real database: they always equal the events they cover, counted again.

The story: ingestion of new, late, time-less and duplicate events interleaved with runs;
a run with nothing new; two runs at once; a crash in the middle of a run; a rebuild; the
``eventworker rollups`` commands; and the classic trap, an ingest transaction that commits
after one holding a higher ``seq``, on each kind of database.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import arq
import pytest
from click.testing import CliRunner
from conftest import WITH_POOLER
from sqlalchemy import func, select, text
from support import event, unique_source

from jobs.ingest import ingest_events
from jobs.rollup import (
    expected_rollups,
    rebuild,
    rebuild_rollups,
    transaction,
    update,
    update_rollups,
    verify,
)
from worker.config import Settings
from worker.db.engine import Database
from worker.db.models import Checkpoint, Event, Rollup
from worker.db.sql import rollup_sql, statements
from worker.domain.rollups import RollupKey
from worker.domain.rows import event_row
from worker.protocol.events import validate_batch
from worker.runtime.context import WorkerContext

pytestmark = pytest.mark.integration


@pytest.fixture(params=WITH_POOLER)
def backend(request: pytest.FixtureRequest) -> str:
    """Every driver, and asyncpg and psycopg through PgBouncer in transaction mode too."""
    return str(request.param)


#: Types that differ only by case or a trailing space: separate series on every database.
TYPES = ("com.example.A", "com.example.a", "com.example.a ")


def _ctx(settings: Settings, db: Database, job_id: str = "rollup-job") -> WorkerContext:
    return {
        "settings": settings,
        "db": db,
        "worker_id": "test",
        "known_jobs": frozenset(),
        "redis": None,
        "job_id": job_id,
        "job_try": 1,
    }


@pytest.fixture
def rollup_settings(settings: Settings) -> Settings:
    """Settings without a settle time, so MySQL/MariaDB runs count what was just committed."""
    return settings.model_copy(update={"rollup_settle_seconds": 0.0})


def sample(round_: int, source: str, count: int = 12) -> list[dict[str, Any]]:
    """Events of one ingestion round: several series, minute and hour edges, late and time-less ones."""
    base = datetime(2026, 3, 4, 5, 59, 58, tzinfo=UTC) + timedelta(hours=round_)
    events = []
    for n in range(count):
        extra: dict[str, Any] = {"type": TYPES[n % len(TYPES)]}
        if n % 5 == 4:
            extra["time"] = None  # counted when it was received
        elif n % 5 == 3:
            extra["time"] = f"20{10 + n}-07-01T00:00:00Z"  # late: an old time arriving now
        else:
            moment = base + timedelta(microseconds=999_999 * (n % 3), seconds=n % 4)
            extra["time"] = moment.isoformat().replace("+00:00", "Z")
        events.append(event(f"{round_}-{n}", f"{source}/{n % 2}", **extra))
    return events


async def ingest(settings: Settings, db: Database, events: list[Any], job_id: str = "ingest") -> None:
    """Store events through the ingest job, as a worker would."""
    await ingest_events(_ctx(settings, db, job_id), events)


async def stored(db: Database) -> dict[RollupKey, int]:
    """The rollups table."""
    async with db.transaction() as session:
        return await rollup_sql.stored_rollups(session)


async def recount(db: Database) -> dict[RollupKey, int]:
    """Every stored event counted again, in Python (the reference the runs' SQL must match)."""
    async with db.transaction() as session:
        return dict(await expected_rollups(session, None))


async def checkpoint(db: Database) -> tuple[int, datetime] | None:
    """The rollups checkpoint: position and when it last moved."""
    async with db.transaction() as session:
        query = select(Checkpoint.position, Checkpoint.updated_at).where(
            Checkpoint.name == rollup_sql.CHECKPOINT
        )
        row = (await session.execute(query)).first()
    return None if row is None else (row[0], row[1])


async def events_count(db: Database) -> int:
    async with db.transaction() as session:
        return int(await session.scalar(select(func.count()).select_from(Event)) or 0)


async def uncovered(db: Database) -> int:
    """Stored events the checkpoint does not cover yet."""
    mark = await checkpoint(db)
    position = rollup_sql.INITIAL_POSITION if mark is None else mark[0]
    newer = Event.txid >= position if db.dialect == "postgresql" else Event.seq > position
    async with db.transaction() as session:
        return int(await session.scalar(select(func.count()).where(newer)) or 0)


async def catch_up(db: Database, settings: Settings, **options: Any) -> int:
    """Run updates until the checkpoint covers every stored event; return how many events they counted.

    On PostgreSQL any write transaction in the cluster (another test's, on another database)
    holds the horizon back while it runs: rows then wait for a later run, never skipped, so a
    test waits for them too.
    """
    rows, deadline = 0, asyncio.get_running_loop().time() + 20
    while True:
        rows += (await update(db, settings, **options))["rows"]
        if await uncovered(db) == 0:
            return rows
        assert asyncio.get_running_loop().time() < deadline, "the rollups did not catch up"
        await asyncio.sleep(0.05)


async def assert_rollups_equal_a_recount(db: Database) -> None:
    """The table equals all events counted again in Python, and ``verify`` finds no difference."""
    table = await stored(db)
    assert table == await recount(db)
    assert sum(n for key, n in table.items() if key.bucket_seconds == 60) == await events_count(db)
    checked = await verify(db)
    assert checked.differences == []
    assert checked.buckets == len(table)


async def test_incremental_runs_equal_a_recount_with_late_and_duplicate_events(rollup_settings, db):
    """Runs between ingestions of new, late, time-less and duplicate events equal a recount each time."""
    settings, source = rollup_settings, unique_source()
    ctx = _ctx(settings, db)
    first_round = sample(0, source)
    await ingest(settings, db, first_round, "ingest-1")
    first = await update_rollups(ctx)
    assert first["transactions"] <= 1
    assert first["rows"] + await catch_up(db, settings) == 12
    await assert_rollups_equal_a_recount(db)

    # Duplicates of stored events (in the batch and across batches) are not stored, so not counted.
    second_round = sample(1, source) + first_round[:5] + sample(1, source)[:3]
    await ingest(settings, db, second_round, "ingest-2")
    mark = await checkpoint(db)
    second = await update_rollups(ctx)
    assert second["checkpoint_from"] == mark[0]
    assert second["rows"] + await catch_up(db, settings) == 12
    await assert_rollups_equal_a_recount(db)

    # Late events whose buckets already exist add to them.
    late = [event(f"late-{n}", f"{source}/0", type=TYPES[0], time="2026-03-04T05:59:58.5Z") for n in range(3)]
    await ingest(settings, db, late, "ingest-3")
    before = (await stored(db))[
        RollupKey(60, datetime(2026, 3, 4, 5, 59, tzinfo=UTC), TYPES[0], f"{source}/0")
    ]
    await update_rollups(ctx)
    await catch_up(db, settings)
    after = (await stored(db))[
        RollupKey(60, datetime(2026, 3, 4, 5, 59, tzinfo=UTC), TYPES[0], f"{source}/0")
    ]
    assert after == before + 3
    await assert_rollups_equal_a_recount(db)


async def test_a_big_backlog_is_counted_in_several_bounded_transactions(rollup_settings, db):
    """With a row limit per transaction a run commits several transactions, counting each event once."""
    source = unique_source()
    for k in range(4):
        await ingest(rollup_settings, db, sample(k, source, count=5), f"ingest-{k}")
    result = await update(db, rollup_settings, max_rows=6)
    assert result["rows"] + await catch_up(db, rollup_settings, max_rows=6) == 20
    assert result["transactions"] >= 2 or result["rows"] < 20
    await assert_rollups_equal_a_recount(db)


async def test_one_large_ingest_transaction_is_counted_in_bounded_parts(rollup_settings, db):
    """A transaction holding more events than a run's limit (a backfill) is counted in parts, each exact.

    On PostgreSQL the checkpoint then stops inside the transaction (its id and a seq): every part is
    a transaction of its own that reads at most the limit, and the check agrees after each of them.
    """
    source = unique_source()
    await ingest(rollup_settings, db, sample(0, source, count=20), "ingest-one-transaction")
    parts, deadline = [], asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline:  # see catch_up: the horizon may wait a moment
        result = await update(db, rollup_settings, max_rows=6, budget_s=0)  # one transaction per call
        parts.append(result["rows"])
        assert (await verify(db)).differences == []
        if await uncovered(db) == 0:
            break
        await asyncio.sleep(0 if result["rows"] else 0.05)
    counted = [rows for rows in parts if rows]
    assert sum(counted) == 20
    assert max(counted) <= 6
    assert len(counted) == 4, parts
    assert await uncovered(db) == 0
    await assert_rollups_equal_a_recount(db)


async def test_a_run_with_nothing_new_changes_nothing(rollup_settings, db):
    """Without new events a run writes nothing: same rollups, same checkpoint position and time."""
    await ingest(rollup_settings, db, sample(0, unique_source()))
    await catch_up(db, rollup_settings)
    table, mark = await stored(db), await checkpoint(db)
    again = await update(db, rollup_settings)
    assert (again["rows"], again["buckets"], again["transactions"]) == (0, 0, 0)
    assert again["checkpoint_from"] == again["checkpoint_to"] == mark[0]
    assert await stored(db) == table
    assert await checkpoint(db) == mark


async def test_the_first_run_on_an_empty_database_creates_the_checkpoint(rollup_settings, db):
    """Before any event a run creates the checkpoint at the start and counts nothing."""
    result = await update(db, rollup_settings)
    assert result["rows"] == 0
    assert (await checkpoint(db))[0] == rollup_sql.INITIAL_POSITION
    assert await stored(db) == {}
    assert (await verify(db)).differences == []


async def test_two_overlapping_runs_do_not_double_count(rollup_settings):
    """Two runs started at once on separate engines count every event exactly once between them."""
    source = unique_source()
    dbs = [Database.from_settings(rollup_settings) for _ in range(3)]
    try:
        for k in range(3):
            await ingest(rollup_settings, dbs[2], sample(k, source, count=10), f"ingest-{k}")
        results = await asyncio.gather(*(update(d, rollup_settings, max_rows=4) for d in dbs[:2]))
        assert sum(r["rows"] for r in results) + await catch_up(dbs[2], rollup_settings) == 30
        await assert_rollups_equal_a_recount(dbs[2])
        # Once more, racing with ingestion this time.
        racing = await asyncio.gather(
            *(update(d, rollup_settings, max_rows=3) for d in dbs[:2]),
            ingest(rollup_settings, dbs[2], sample(9, source, count=10), "ingest-9"),
        )
        rows = sum(r["rows"] for r in racing if r is not None)
        assert rows + await catch_up(dbs[2], rollup_settings) == 10
        await assert_rollups_equal_a_recount(dbs[2])
    finally:
        for d in dbs:
            await d.dispose()


async def test_a_run_meeting_another_at_the_checkpoint_waits_then_counts_nothing_twice(
    rollup_settings, monkeypatch
):
    """While one run holds the checkpoint the next waits, then gives way (PostgreSQL) or finds nothing new."""
    dbs = [Database.from_settings(rollup_settings) for _ in range(3)]
    holding, release = asyncio.Event(), asyncio.Event()
    real_upsert = rollup_sql.upsert_rollups

    async def upsert_when_released(session, rows):
        if not holding.is_set():  # only the first run is held, with the checkpoint locked
            holding.set()
            await release.wait()
        return await real_upsert(session, rows)

    try:
        await ingest(rollup_settings, dbs[2], sample(0, unique_source()))
        monkeypatch.setattr(rollup_sql, "upsert_rollups", upsert_when_released)
        first = asyncio.create_task(update(dbs[0], rollup_settings))
        await holding.wait()
        second = asyncio.create_task(update(dbs[1], rollup_settings))
        await asyncio.sleep(0.3)
        assert not second.done()  # waiting for the checkpoint
        release.set()
        held, waited = await first, await second
        assert waited["rows"] == 0
        if dbs[0].dialect == "postgresql" and held["rows"]:
            # Its snapshot predates the first run's commit: it rolls back instead of counting again.
            assert waited["gave_way"]
        assert held["rows"] + await catch_up(dbs[2], rollup_settings) == 12
        await assert_rollups_equal_a_recount(dbs[2])
    finally:
        release.set()
        for d in dbs:
            await d.dispose()


async def test_a_crash_mid_run_leaves_rollups_and_checkpoint_unchanged(rollup_settings, db, monkeypatch):
    """A failure after part of the upsert rolls everything back; the next run counts those events once."""
    source = unique_source()
    await ingest(rollup_settings, db, sample(0, source), "ingest-1")
    await catch_up(db, rollup_settings)
    await ingest(rollup_settings, db, sample(1, source), "ingest-2")
    table, mark = await stored(db), await checkpoint(db)
    real_upsert = rollup_sql.upsert_rollups

    async def upsert_then_crash(session, rows):
        await real_upsert(session, rows[: len(rows) // 2])
        raise RuntimeError("worker killed mid-upsert")

    monkeypatch.setattr(rollup_sql, "upsert_rollups", upsert_then_crash)
    with pytest.raises(arq.Retry):  # the job runner asks arq to try again later
        await update_rollups(_ctx(rollup_settings, db))
    assert await stored(db) == table
    assert await checkpoint(db) == mark

    monkeypatch.setattr(rollup_sql, "upsert_rollups", real_upsert)
    result = await update_rollups(_ctx(rollup_settings, db))
    assert result["rows"] + await catch_up(db, rollup_settings) == 12
    await assert_rollups_equal_a_recount(db)


async def test_rebuild_reproduces_the_incremental_table(rollup_settings, db):
    """A rebuild (in bounded passes) gives the table the incremental runs built, and repairs damage."""
    source = unique_source()
    for k in range(3):
        await ingest(rollup_settings, db, sample(k, source), f"ingest-{k}")
        await catch_up(db, rollup_settings, max_rows=5)
    incremental, mark = await stored(db), await checkpoint(db)

    async with db.transaction() as session:  # damage: a lost bucket and a wrong count
        await session.execute(Rollup.__table__.delete().where(Rollup.bucket_seconds == 3600))
        await session.execute(Rollup.__table__.update().values(count=Rollup.count + 1))
    assert (await verify(db)).differences

    result = await rebuild(db, rollup_settings, max_rows=5)
    assert result["checkpoint_from"] == mark[0]
    assert result["rows"] + await catch_up(db, rollup_settings) == 36
    assert await stored(db) == incremental
    await assert_rollups_equal_a_recount(db)

    # The job entry point does the same, and an update after it has nothing left to count.
    result = await rebuild_rollups(_ctx(rollup_settings, db))
    assert result["rows"] + await catch_up(db, rollup_settings) == 36
    assert (await update(db, rollup_settings))["rows"] == 0
    assert await stored(db) == incremental


async def test_the_rollups_commands_update_verify_and_rebuild(rollup_settings, db, monkeypatch):
    """``eventworker rollups update|verify|rebuild``; verify exits 1 naming the bucket when counts differ."""
    from worker.commands.rollups import rollups_command

    await ingest(rollup_settings, db, sample(0, unique_source()))
    monkeypatch.setenv("DATABASE_URL", rollup_settings.database_url)
    monkeypatch.setenv("EVENTWORKER_DB_POOLER", rollup_settings.db_pooler)
    monkeypatch.setenv("REDIS_URL", rollup_settings.redis_url)
    monkeypatch.setenv("EVENTWORKER_ROLLUP_SETTLE_SECONDS", "0")
    runner = CliRunner()

    def invoke(*args: str):  # the CLI runs its own event loop: give it a thread
        return asyncio.to_thread(runner.invoke, rollups_command, list(args))

    updated = await invoke("update")
    assert updated.exit_code == 0, updated.output
    assert updated.output.startswith("counted ")
    assert " waiting to be counted" in updated.output  # what a person can use, not a checkpoint's number
    assert "checkpoint" not in updated.output
    await catch_up(db, rollup_settings)
    verified = await invoke("verify")
    assert verified.exit_code == 0, verified.output
    assert "rollups match" in verified.output

    async with db.transaction() as session:
        await session.execute(
            Rollup.__table__.update().where(Rollup.bucket_seconds == 3600).values(count=Rollup.count + 5)
        )
    broken = await invoke("verify")
    assert broken.exit_code == 1
    assert "hour 2026-03-04T05:00:00+00:00" in broken.output
    assert "rollups say" in broken.output

    rebuilt = await invoke("rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "counted " in rebuilt.output
    assert (await invoke("verify")).exit_code == 0
    await catch_up(db, rollup_settings)
    await assert_rollups_equal_a_recount(db)


# The classic trap: seq is taken at insert and seen at commit.


def rows_for(events: list[dict[str, Any]], received_at: datetime, job_id: str) -> list[dict[str, Any]]:
    """``events`` rows as the ingest job would insert them."""
    return [event_row(e, received_at, job_id) for e in validate_batch(events, 1_000_000).events]


async def seq_of(session, event_id: str) -> int:
    return int(await session.scalar(select(Event.seq).where(Event.event_id == event_id)))


async def counted(db: Database, type_: str) -> int:
    """How many events of ``type_`` the minute rollups hold."""
    return sum(n for key, n in (await stored(db)).items() if key.bucket_seconds == 60 and key.type == type_)


@pytest.mark.parametrize("backend", ["asyncpg", "psycopg"])
async def test_postgresql_counts_a_row_that_commits_after_a_higher_seq(settings, db):
    """A takes the lower seq, B the higher; B commits, a run passes, A commits: a run counts a, once."""
    source, now = unique_source(), datetime.now(UTC)
    a_event = event("a", source, type="type-a")
    b_event = event("b", source, type="type-b")
    db_a, db_b = Database.from_settings(settings), Database.from_settings(settings)
    try:
        async with db_a.transaction("ingest_events") as tx_a:
            await statements.insert_events(tx_a, rows_for([a_event], now, "job-a"))
            seq_a = await seq_of(tx_a, "evt-a")
            async with db_b.transaction("ingest_events") as tx_b:
                await statements.insert_events(tx_b, rows_for([b_event], now, "job-b"))
                seq_b = await seq_of(tx_b, "evt-b")
            assert seq_a < seq_b

            # The trap: b is visible with the highest seq while a is not; "done up to max(seq)" skips a.
            async with db.transaction() as session:
                visible = set((await session.scalars(select(Event.event_id))).all())
                assert visible == {"evt-b"}
                assert await session.scalar(select(func.max(Event.seq))) == seq_b

            during = await update(db, settings)
            assert during["rows"] == 0  # the horizon stops at A, still running: b waits with it
            assert await counted(db, "type-a") == 0
            position_during = (await checkpoint(db))[0]
        async with db.transaction() as session:
            txid_a = await session.scalar(select(Event.txid).where(Event.event_id == "evt-a"))
        assert position_during <= txid_a

        assert await catch_up(db, settings) == 2
        assert await counted(db, "type-a") == 1
        assert await counted(db, "type-b") == 1
        assert (await update(db, settings))["rows"] == 0
        assert await counted(db, "type-a") == 1
        await assert_rollups_equal_a_recount(db)
    finally:
        await db_a.dispose()
        await db_b.dispose()


@pytest.mark.parametrize("backend", ["asyncpg", "psycopg"])
async def test_postgresql_counts_rows_committed_before_a_slow_transaction(settings, db):
    """Rows of finished transactions are counted while an older one still runs; its rows come later."""
    source, now = unique_source(), datetime.now(UTC)
    await ingest(settings, db, [event("early", source, type="early")])
    db_slow = Database.from_settings(settings)
    try:
        async with db_slow.transaction("ingest_events") as slow:
            await statements.insert_events(slow, rows_for([event("slow", source, type="slow")], now, "job-s"))
            await ingest(settings, db, [event("late", source, type="late")])
            deadline = asyncio.get_running_loop().time() + 20
            while not await counted(db, "early"):  # other tests' transactions may hold the horizon too
                assert asyncio.get_running_loop().time() < deadline
                await update(db, settings)
            # "late" committed, but began after the slow transaction: it waits for it.
            assert (await counted(db, "late"), await counted(db, "slow")) == (0, 0)
        assert await catch_up(db, settings) == 2
        assert (await counted(db, "slow"), await counted(db, "late")) == (1, 1)
        await assert_rollups_equal_a_recount(db)
    finally:
        await db_slow.dispose()


@pytest.mark.parametrize("backend", ["aiomysql", "asyncmy"])
async def test_mysql_waits_out_the_settle_time_instead_of_skipping(settings, db):
    """A takes the lower seq, B the higher; B commits: runs inside the settle window do not pass a."""
    settings = settings.model_copy(update={"rollup_settle_seconds": 5.0})
    source = unique_source()
    received = datetime.now(UTC).replace(microsecond=0)
    db_a, db_b = Database.from_settings(settings), Database.from_settings(settings)
    try:
        async with db_a.transaction("ingest_events") as tx_a:
            await statements.insert_events(
                tx_a, rows_for([event("a", source, type="type-a")], received, "job-a")
            )
            seq_a = await seq_of(tx_a, "evt-a")
            async with db_b.transaction("ingest_events") as tx_b:
                await statements.insert_events(
                    tx_b, rows_for([event("b", source, type="type-b")], received, "job-b")
                )
                seq_b = await seq_of(tx_b, "evt-b")
            assert seq_a < seq_b
            async with db.transaction() as session:  # the trap: b visible with the highest seq, a not
                assert set((await session.scalars(select(Event.event_id))).all()) == {"evt-b"}

            during = await update(db, settings, clock=lambda: received + timedelta(seconds=1))
            assert during["rows"] == 0
            assert (await checkpoint(db))[0] == rollup_sql.INITIAL_POSITION
        # A committed, but both rows are still inside the settle window: still nothing.
        inside = await update(db, settings, clock=lambda: received + timedelta(seconds=4))
        assert inside["rows"] == 0

        settled = await update(db, settings, clock=lambda: received + timedelta(seconds=6))
        assert settled["rows"] == 2
        assert settled["checkpoint_to"] == seq_b
        assert (await counted(db, "type-a"), await counted(db, "type-b")) == (1, 1)
        await assert_rollups_equal_a_recount(db)
    finally:
        await db_a.dispose()
        await db_b.dispose()


@pytest.mark.parametrize("backend", ["aiosqlite"])
async def test_sqlite_writers_commit_in_seq_order_so_the_high_water_mark_is_exact(settings, db):
    """A second SQLite writer waits for the first to commit, so seqs become visible in order."""
    source, now = unique_source(), datetime.now(UTC)
    db_a, db_b = Database.from_settings(settings), Database.from_settings(settings)
    try:

        async def insert_b() -> int:
            async with db_b.transaction("ingest_events") as tx_b:
                await statements.insert_events(
                    tx_b, rows_for([event("b", source, type="type-b")], now, "job-b")
                )
                return await seq_of(tx_b, "evt-b")

        async with db_a.transaction("ingest_events") as tx_a:
            await statements.insert_events(tx_a, rows_for([event("a", source, type="type-a")], now, "job-a"))
            seq_a = await seq_of(tx_a, "evt-a")
            writer_b = asyncio.create_task(insert_b())
            await asyncio.sleep(0.3)
            assert not writer_b.done()  # B cannot even insert, let alone commit, before A ends
        seq_b = await writer_b
        assert seq_a < seq_b

        result = await update(db, settings)
        assert result["rows"] == 2
        async with db.transaction() as session:
            highest = await session.scalar(select(func.max(Event.seq)))
        assert (await checkpoint(db))[0] == highest == seq_b
        await assert_rollups_equal_a_recount(db)
    finally:
        await db_a.dispose()
        await db_b.dispose()


@pytest.mark.parametrize("backend", ["asyncpg", "psycopg", "aiomysql", "asyncmy"])
async def test_a_run_reads_one_snapshot(settings, db):
    """PostgreSQL and MySQL runs read in REPEATABLE READ (SQLite runs hold its one write lock instead)."""
    query = "SHOW transaction_isolation" if db.dialect == "postgresql" else "SELECT @@tx_isolation"
    async with transaction(db) as session:
        level = str(await session.scalar(text(query)))
    assert level.replace("-", " ").lower() == "repeatable read"
