"""A partitioned events table on PostgreSQL: exactly once across partitions, partitions ahead and on
demand, retention by whole partitions (an interrupted detach included), pruning, the conversion of a
populated table while ingestion goes on, and migration 0003's choice."""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from conftest import PARTITIONED_BACKENDS
from sqlalchemy import event as sa_event
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError
from support import event

from jobs.partitions import make_partitions_ahead
from jobs.retention import run_retention
from worker.commands.worker import migrate_command
from worker.db.engine import Database
from worker.db.failures import is_layout_change
from worker.db.models import Event, HandlerRun
from worker.db.sql import history, partition_convert, partition_sql, report_sql, statements
from worker.domain.export import ExportFilter
from worker.domain.partitions import LEGACY, floor, partition_name
from worker.domain.rows import event_row
from worker.protocol.events import CloudEvent

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


@pytest.fixture(params=PARTITIONED_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """asyncpg (COPY into event_keys and events) and psycopg (the INSERT path) on a partitioned events."""
    return str(request.param)


def rows_of(
    first: int, count: int, received_at: datetime, source: str = "/p", job: str = "seed"
) -> list[Any]:
    return [
        event_row(CloudEvent.model_validate(event(n, source)), received_at, job)
        for n in range(first, first + count)
    ]


async def store(db: Database, first: int, count: int, received_at: datetime, source: str = "/p") -> int:
    async with db.transaction() as session:
        return await statements.insert_events(session, rows_of(first, count, received_at, source))


async def scalar(db: Database, sql: str, **params: Any) -> Any:
    async with db.engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar()


async def partition_names(db: Database) -> list[str]:
    async with db.engine.connect() as connection:
        return [partition.name for partition in await partition_sql.read_partitions(connection)]


async def test_an_event_sent_again_a_week_or_a_month_later_is_a_duplicate(db):
    """Identities hold across partitions: stored 30 and 7 days ago, the same events now are duplicates."""
    assert await store(db, 0, 100, NOW - timedelta(days=30)) == 100
    assert await store(db, 100, 100, NOW - timedelta(days=7)) == 100
    assert await store(db, 0, 200, NOW) == 0, "every one of them is stored already"
    assert await store(db, 150, 100, NOW) == 50
    assert await scalar(db, "SELECT count(*) FROM events") == 250
    assert await scalar(db, "SELECT count(*) FROM event_keys") == 250
    names = await partition_names(db)
    assert partition_name(floor(NOW - timedelta(days=30), "day")) in names, "made on demand by the ingest"


@pytest.mark.parametrize("size", [10, 200], ids=["insert", "copy-sized"])
async def test_two_workers_storing_one_identity_across_midnight_store_it_once(db, size):
    """The second of two transactions storing the same events (one just before midnight, one after,
    so in two partitions) waits for the first, then skips them; if the first rolls back, it stores them."""
    midnight = floor(NOW, "day")
    before, after = midnight - timedelta(microseconds=1), midnight + timedelta(microseconds=1)
    await store(db, 10_000, 1, before)  # both partitions exist before the race
    await store(db, 10_001, 1, after)
    for first_commits, base in ((True, 0), (False, 1000)):
        entered, release = asyncio.Event(), asyncio.Event()

        async def first_worker(
            base: int = base,
            first_commits: bool = first_commits,
            entered: asyncio.Event = entered,
            release: asyncio.Event = release,
        ) -> int:
            async with db.transaction() as session:
                stored = await statements.insert_events(session, rows_of(base, size, before, job="first"))
                entered.set()
                await release.wait()
                if not first_commits:
                    raise RuntimeError("the first worker fails")
                return stored

        async def second_worker(base: int = base, entered: asyncio.Event = entered) -> int:
            await entered.wait()
            async with db.transaction() as session:
                return await statements.insert_events(session, rows_of(base, size, after, job="second"))

        first = asyncio.create_task(first_worker())
        second = asyncio.create_task(second_worker())
        await entered.wait()
        await asyncio.sleep(0.3)
        assert not second.done(), "the second waits on the first's keys"
        release.set()
        if first_commits:
            assert (await first, await second) == (size, 0)
        else:
            with pytest.raises(RuntimeError):
                await first
            assert await second == size
    assert (
        await scalar(
            db, "SELECT count(*) FROM events WHERE event_id <> 'evt-10000' AND event_id <> 'evt-10001'"
        )
        == 2 * size
    )
    assert await scalar(db, "SELECT count(*) FROM events") == await scalar(
        db, "SELECT count(*) FROM event_keys"
    )


async def test_concurrent_batches_over_two_days_store_each_identity_once(db):
    """Eight overlapping batches at once, half received yesterday, half today: each identity once."""
    days = [NOW - timedelta(days=1), NOW]

    async def batch(k: int) -> int:
        async with db.transaction() as session:
            return await statements.insert_events(session, rows_of(k * 100, 300, days[k % 2], job=f"job-{k}"))

    stored = await asyncio.gather(*(batch(k) for k in range(8)))
    assert sum(stored) == 1000  # identities 0 .. 999
    assert await scalar(db, "SELECT count(DISTINCT (source, event_id)) FROM events") == sum(stored)
    assert await scalar(db, "SELECT count(*) FROM events") == sum(stored)


async def test_a_missing_partition_is_made_by_the_ingest_that_needs_it(db):
    """No partition for a time a year ahead (the cron never made it): the ingest makes it and stores."""
    later = NOW + timedelta(days=365)
    name = partition_name(floor(later, "day"))
    assert name not in await partition_names(db)
    assert await store(db, 0, 70, later) == 70
    assert name in await partition_names(db)
    assert await scalar(db, f'SELECT count(*) FROM "{name}"') == 70


async def test_maintain_partitions_keeps_intervals_made_ahead(db, settings):
    """The cron job makes the partitions up to partitions_ahead days past today, and nothing twice."""
    at = NOW + timedelta(days=10)
    result = await make_partitions_ahead(db, settings.model_copy(update={"partitions_ahead": 2}), at)
    expected = [partition_name(floor(at, "day") + timedelta(days=d)) for d in range(3)]
    assert result == {"partitioned": True, "created": expected}
    again = await make_partitions_ahead(db, settings.model_copy(update={"partitions_ahead": 2}), at)
    assert again["created"] == []


async def _handler_runs(db: Database, seqs: list[int]) -> None:
    async with db.transaction() as session:
        await session.execute(
            insert(HandlerRun),
            [
                {
                    "event_seq": seq,
                    "handler": "mailer",
                    "status": "done",
                    "tries": 1,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
                for seq in seqs
            ],
        )


async def test_retention_drops_whole_partitions_with_their_identities_and_handler_runs(
    db, settings, tmp_path
):
    """Two days past retention go as two partitions, exported first, with their keys and handler runs;
    the partition holding the cutoff stays whole; an identity of a dropped day can be stored again."""
    old, older, recent = NOW - timedelta(days=40), NOW - timedelta(days=41), NOW - timedelta(days=1)
    await store(db, 0, 30, older)
    await store(db, 30, 20, old)
    await store(db, 50, 10, recent)
    await store(
        db, 60, 5, floor(NOW - timedelta(days=30), "day")
    )  # past retention, in the cutoff's partition
    async with db.transaction() as session:
        seqs = list((await session.scalars(select(Event.seq).order_by(Event.seq))).all())
    await _handler_runs(db, seqs[::5])
    directory = tmp_path / "archive"
    settings = settings.model_copy(
        update={"retention_days": 30, "retention_chunk_size": 7, "retention_export_dir": str(directory)}
    )

    result = await run_retention(db, settings, NOW)

    assert (result["partitions_dropped"], result["events_deleted"], result["event_chunks"]) == (2, 50, 0)
    assert result["exported_rows"] == 50
    [exported] = directory.iterdir()
    lines = [orjson.loads(line)["id"] for line in gzip.decompress(exported.read_bytes()).splitlines()]
    assert sorted(lines) == sorted(f"evt-{n}" for n in range(50))
    names = await partition_names(db)
    assert partition_name(floor(old, "day")) not in names
    assert partition_name(floor(older, "day")) not in names
    assert await scalar(db, "SELECT count(*) FROM events") == 15
    assert await scalar(db, "SELECT count(*) FROM event_keys") == 15
    assert await scalar(db, "SELECT min(event_seq) FROM handler_runs") == seqs[50]
    assert (
        await scalar(
            db, "SELECT count(*) FROM pg_class WHERE relname LIKE 'events_p%' AND NOT relispartition"
        )
        == 0
    )
    assert await store(db, 0, 5, NOW) == 5, "past retention an identity is forgotten: stored again"
    again = await run_retention(db, settings, NOW)
    assert (again["partitions_dropped"], again["events_deleted"], again["exported_path"]) == (0, 0, None)


async def _pid_waiting_on_detach(db: Database, within: float = 10) -> int:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        pid = await scalar(
            db,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE '%DETACH PARTITION%'"
            " AND state = 'active' AND pid <> pg_backend_pid()",
        )
        if pid is not None:
            return int(pid)
        assert asyncio.get_running_loop().time() < deadline, "no DETACH came to wait"
        await asyncio.sleep(0.05)


async def test_an_interrupted_detach_is_finalized_by_the_next_run(db, settings):
    """A detach waiting behind a long snapshot (an export) and cancelled leaves its partition pending:
    ingestion goes on, and the next retention run finishes the detach, the keys and the drop."""
    await store(db, 0, 40, NOW - timedelta(days=40))
    settings = settings.model_copy(update={"retention_days": 30})
    async with db.engine.connect() as holder:
        holder = await holder.execution_options(isolation_level="REPEATABLE READ")
        async with holder.begin():
            await holder.execute(select(func.count()).select_from(Event))  # an export's snapshot, say
            retention = asyncio.create_task(run_retention(db, settings, NOW))
            pid = await _pid_waiting_on_detach(db)
            assert await store(db, 100, 70, NOW) == 70, "ingestion is not held up by the waiting detach"
            await scalar(db, "SELECT pg_cancel_backend(:pid)", pid=pid)
            with pytest.raises(DBAPIError, match="canceling statement"):
                await retention
    async with db.engine.connect() as connection:
        assert await partition_sql.pending_detaches(connection) == [
            partition_name(floor(NOW - timedelta(days=40), "day"))
        ]
    assert await scalar(db, "SELECT count(*) FROM events") == 70, (
        "a pending partition is out of sight already"
    )

    result = await run_retention(db, settings, NOW)

    assert (result["partitions_dropped"], result["events_deleted"]) == (1, 40)
    async with db.engine.connect() as connection:
        assert await partition_sql.pending_detaches(connection) == []
    assert await scalar(db, "SELECT count(*) FROM event_keys") == 70


async def _plans(db: Database, run: Any) -> list[str]:
    """The plans of the statements on events that ``run(session)`` sends, as EXPLAIN shows them."""
    sent: list[tuple[str, Any]] = []

    def capture(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        if " events" in statement and not statement.startswith("EXPLAIN"):
            sent.append((statement, parameters))

    sa_event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with db.transaction() as session:
            await run(session)
            plans = []
            connection = await session.connection()
            for statement, parameters in sent:
                result = await connection.exec_driver_sql(f"EXPLAIN (COSTS OFF) {statement}", parameters)
                plans.append("\n".join(row[0] for row in result))
    finally:
        sa_event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    return plans


async def test_reports_and_retention_exports_read_only_the_partitions_of_their_window(db):
    """EXPLAIN: the report's counts over the last hour and the export of what is past retention scan
    only the partitions of their window of received_at, not the other days'."""
    days = [NOW - timedelta(days=d) for d in (40, 20, 2, 0)]
    for k, day in enumerate(days):
        await store(db, k * 100, 80, day)
    names = [partition_name(floor(day, "day")) for day in days]

    async def report(session: Any) -> None:
        await report_sql.window_counts(session, NOW - timedelta(hours=1), NOW + timedelta(seconds=1))

    async def export(session: Any) -> None:
        await session.execute(history.select_events(ExportFilter(received_before=NOW - timedelta(days=30))))

    [counts] = await _plans(db, report)
    assert names[3] in counts, counts
    assert not any(name in counts for name in names[:3]), counts
    [past] = await _plans(db, export)
    assert names[0] in past, past
    assert not any(name in past for name in names[1:]), past


@pytest.mark.parametrize("backend", ["asyncpg"])
async def test_converting_a_populated_table_keeps_every_event_while_ingestion_goes_on(db, settings):
    """`eventworker partition`'s conversion of a table of events: ingestion runs all along, every event
    and identity is kept, the old rows stay one partition whose old rows retention deletes in chunks."""
    await store(db, 0, 300, NOW - timedelta(days=40))
    await store(db, 300, 200, NOW - timedelta(days=1))
    async with db.transaction() as session:
        seqs = list((await session.scalars(select(Event.seq).order_by(Event.seq))).all())
    await _handler_runs(db, seqs[:10])
    stop, stored, failures = asyncio.Event(), [0], []

    async def ingest() -> None:
        k = 0
        while not stop.is_set():
            try:
                stored[0] += await store(db, 10_000 + k * 100, 100, datetime.now(UTC), source="/live")
                k += 1
            except DBAPIError as exc:  # the one statement of a connection that took events for one table
                failures.append(exc)
            await asyncio.sleep(0.01)

    live = asyncio.create_task(ingest())
    await asyncio.sleep(0.2)
    said: list[str] = []
    report = await partition_convert.convert(db.engine, "day", 2, datetime.now(UTC), said.append)
    await asyncio.sleep(0.3)
    stop.set()
    await live

    assert report.rows >= 500
    assert report.cutover is not None
    assert stored[0] > 0
    assert all(is_layout_change(exc) for exc in failures), failures
    async with db.engine.connect() as connection:
        assert (await partition_sql.read_layout(connection)).partitioned
        partitions = await partition_sql.read_partitions(connection)
    assert (partitions[0].name, partitions[0].lower, partitions[0].upper) == (LEGACY, None, report.cutover)
    assert await scalar(db, "SELECT count(*) FROM events") == 500 + stored[0]
    assert await scalar(db, "SELECT count(*) FROM event_keys") == 500 + stored[0]
    assert await store(db, 0, 500, datetime.now(UTC)) == 0, "identities stored before the conversion hold"
    assert await store(db, 0, 10, report.cutover + timedelta(minutes=1), source="/after") == 10
    assert (
        await scalar(
            db, "SELECT count(*) FROM pg_constraint WHERE conname = 'fk_handler_runs_event_seq_events'"
        )
        == 0
    )

    result = await run_retention(
        db, settings.model_copy(update={"retention_days": 30, "retention_chunk_size": 100}), NOW
    )
    assert (result["events_deleted"], result["event_chunks"], result["partitions_dropped"]) == (300, 3, 0)
    assert await scalar(db, "SELECT count(*) FROM handler_runs") == 0, "the old events' runs went with them"
    assert await scalar(db, "SELECT count(*) FROM events") == await scalar(
        db, "SELECT count(*) FROM event_keys"
    )


def test_migrate_partitions_a_new_database_and_leaves_a_populated_table_alone(
    empty_pg_url, pg_settings, monkeypatch
):
    """`eventworker migrate`: a new database gets a partitioned events; one with events keeps its table
    and is told how to convert it."""
    monkeypatch.setenv("DATABASE_URL", empty_pg_url)
    result = CliRunner().invoke(migrate_command, [])
    assert result.exit_code == 0, result.output

    async def layout(url: str) -> bool:
        db = Database.from_settings(pg_settings.model_copy(update={"database_url": url}))
        try:
            async with db.engine.connect() as connection:
                return (await partition_sql.read_layout(connection)).partitioned
        finally:
            await db.dispose()

    assert asyncio.run(layout(empty_pg_url))

    async def populate() -> None:
        db = Database.from_settings(pg_settings)
        try:
            await store(db, 0, 5, NOW)
        finally:
            await db.dispose()

    asyncio.run(populate())
    monkeypatch.setenv("DATABASE_URL", pg_settings.database_url)
    result = CliRunner().invoke(migrate_command, [])
    assert result.exit_code == 0, result.output
    assert "`eventworker partition` partitions it by day" in result.output
    assert not asyncio.run(layout(pg_settings.database_url))
