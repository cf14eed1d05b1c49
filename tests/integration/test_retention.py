"""Retention on every backend: old rows go in bounded chunks, one commit each; recent rows stay."""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import event as sa_event
from sqlalchemy import func, insert, select
from support import event

from jobs import retention
from jobs.retention import apply_retention, run_retention
from worker.commands.export import retention_command
from worker.db.engine import Database
from worker.db.models import DeadLetter, Event, HandlerRun
from worker.db.sql import history, statements
from worker.domain.rows import event_row
from worker.protocol.events import CloudEvent, Rejection
from worker.runtime.context import WorkerContext

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


async def store_events(db: Database, first: int, count: int, age: timedelta, source: str = "/ret") -> None:
    """Store events ``first`` .. ``first + count - 1``, received ``age`` ago."""
    rows = [
        event_row(CloudEvent.model_validate(event(n, source)), NOW - age, "seed")
        for n in range(first, first + count)
    ]
    async with db.transaction() as session:
        await statements.insert_events(session, rows)


async def store_dead_letters(db: Database, job: str, count: int, age: timedelta) -> None:
    """Store ``count`` dead letters of job ``job``, received ``age`` ago."""
    rows = [
        statements.dead_letter_row(
            Rejection(raw=f"bad {job} {n}".encode(), reason="invalid", errors=[]),
            n,
            job,
            "ingest_events",
            NOW - age,
        )
        for n in range(count)
    ]
    async with db.transaction() as session:
        await statements.insert_dead_letters(session, rows)


async def event_ids(db: Database) -> list[str]:
    async with db.transaction() as session:
        return list((await session.scalars(select(Event.event_id).order_by(Event.seq))).all())


async def dead_letter_jobs(db: Database) -> dict[str, int]:
    async with db.transaction() as session:
        rows = await session.execute(select(DeadLetter.job_id, func.count()).group_by(DeadLetter.job_id))
        return {job: n for job, n in rows}


def count_commits(db: Database) -> list[int]:
    """A list that grows by one at every commit on ``db``'s engine."""
    commits: list[int] = []
    sa_event.listen(db.engine.sync_engine, "commit", lambda _conn: commits.append(1))
    return commits


def _ctx(settings, db: Database) -> WorkerContext:
    return {
        "settings": settings,
        "worker_id": "test:1",
        "known_jobs": frozenset({"apply_retention"}),
        "redis": None,
        "db": db,
        "job_id": "cron:apply_retention",
        "job_try": 1,
    }


async def test_retention_deletes_old_rows_in_chunks_with_a_commit_each(settings, db):
    """50 old events with chunks of 7 go in 8 transactions; dead letters by their own, shorter retention."""
    await store_events(db, 0, 50, timedelta(days=40))
    await store_events(db, 50, 20, timedelta(days=20))  # younger than the 30-day event retention
    await store_dead_letters(db, "old", 12, timedelta(days=20))  # older than the 10-day dead-letter one
    await store_dead_letters(db, "new", 5, timedelta(days=5))
    settings = settings.model_copy(
        update={"retention_days": 30, "dead_letter_retention_days": 10, "retention_chunk_size": 7}
    )
    commits = count_commits(db)

    result = await apply_retention(_ctx(settings, db))

    assert result == {
        "events_deleted": 50,
        "event_chunks": 8,
        "partitions_dropped": 0,
        "dead_letters_deleted": 12,
        "dead_letter_chunks": 2,
        "exported_path": None,
        "exported_rows": 0,
        "finished": True,
    }
    assert len(commits) == 8 + 2, "one transaction per chunk, and no other"
    assert await event_ids(db) == [f"evt-{n}" for n in range(50, 70)]
    assert await dead_letter_jobs(db) == {"new": 5}
    assert db.engine.pool.checkedout() == 0


async def test_a_run_out_of_time_stops_between_chunks_and_the_next_goes_on(settings, db):
    """With its time budget spent a run starts no other chunk; what it deleted stays, the next run ends it."""
    await store_events(db, 0, 30, timedelta(days=40))
    await store_dead_letters(db, "old", 4, timedelta(days=20))
    settings = settings.model_copy(
        update={"retention_days": 30, "dead_letter_retention_days": 10, "retention_chunk_size": 7}
    )

    first = await run_retention(db, settings, datetime.now(UTC), budget_s=0)

    assert (first["events_deleted"], first["event_chunks"], first["finished"]) == (0, 0, False)
    assert first["dead_letters_deleted"] == 0
    assert len(await event_ids(db)) == 30
    then = await run_retention(db, settings, datetime.now(UTC), budget_s=60)
    assert (then["events_deleted"], then["event_chunks"], then["finished"]) == (30, 5, True)
    assert then["dead_letters_deleted"] == 4
    assert await event_ids(db) == []


async def test_unset_retention_keeps_everything(settings, db):
    """Without retention settings nothing is deleted, however old."""
    await store_events(db, 0, 5, timedelta(days=4000))
    await store_dead_letters(db, "old", 3, timedelta(days=4000))
    commits = count_commits(db)
    result = await run_retention(db, settings, NOW)
    assert (result["events_deleted"], result["dead_letters_deleted"], len(commits)) == (0, 0, 0)
    assert len(await event_ids(db)) == 5


async def test_retention_exports_exactly_the_rows_it_deletes(settings, db, tmp_path):
    """With retention_export_dir, one gzipped NDJSON file per run holds exactly the deleted events."""
    await store_events(db, 0, 23, timedelta(days=40))
    await store_events(db, 23, 4, timedelta(days=1))
    async with db.transaction() as session:
        old = [
            tuple(row) for row in await session.execute(select(Event.seq, Event.event_id).order_by(Event.seq))
        ][:23]
    directory = tmp_path / "archive"
    settings = settings.model_copy(
        update={
            "retention_days": 30,
            "retention_chunk_size": 10,
            "retention_export_dir": str(directory),
            "export_chunk_size": 5,
        }
    )

    result = await run_retention(db, settings, NOW)

    [exported] = directory.iterdir()
    assert result["exported_path"] == str(exported)
    assert (result["exported_rows"], result["events_deleted"], result["event_chunks"]) == (23, 23, 3)
    assert exported.name.startswith("events-")
    assert exported.name.endswith(".ndjson.gz")
    lines = [orjson.loads(line) for line in gzip.decompress(exported.read_bytes()).splitlines()]
    assert [(line["ewseq"], line["id"]) for line in lines] == old
    assert await event_ids(db) == [f"evt-{n}" for n in range(23, 27)]

    again = await run_retention(db, settings, NOW)
    assert (again["exported_path"], again["events_deleted"]) == (None, 0)
    assert list(directory.iterdir()) == [exported], "a run with nothing to delete writes no file"


async def test_a_run_cut_short_after_its_export_loses_no_event(settings, db, tmp_path, monkeypatch):
    """Deletes failing after the export: the next run exports the rest again; none goes unexported."""
    await store_events(db, 0, 30, timedelta(days=40))
    directory = tmp_path / "archive"
    settings = settings.model_copy(
        update={"retention_days": 30, "retention_chunk_size": 10, "retention_export_dir": str(directory)}
    )
    real_delete = history.delete_events_older_than
    calls = 0

    async def failing_second_chunk(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionResetError("database went away")
        return await real_delete(*args, **kwargs)

    monkeypatch.setattr(retention.history, "delete_events_older_than", failing_second_chunk)
    with pytest.raises(ConnectionResetError):
        await run_retention(db, settings, NOW)
    assert len(await event_ids(db)) == 20, "the first chunk was committed"
    monkeypatch.setattr(retention.history, "delete_events_older_than", real_delete)

    await asyncio.sleep(0.001)  # the next run's file has a later name
    result = await run_retention(db, settings, NOW)

    assert (result["exported_rows"], result["events_deleted"]) == (20, 20)
    files = sorted(directory.iterdir())
    assert len(files) == 2
    exported = [
        orjson.loads(line)["id"] for path in files for line in gzip.decompress(path.read_bytes()).splitlines()
    ]
    assert len(exported) == 30 + 20, "the 20 not deleted the first time are in both files"
    assert set(exported) == {f"evt-{n}" for n in range(30)}
    assert await event_ids(db) == []


async def test_retention_removes_handler_runs_with_their_events(settings, db):
    """A deleted event's handler runs go with it (ON DELETE CASCADE, foreign keys on in SQLite too)."""
    await store_events(db, 0, 3, timedelta(days=40))
    await store_events(db, 3, 2, timedelta(days=1))
    async with db.transaction() as session:
        seqs = list((await session.scalars(select(Event.seq).order_by(Event.seq))).all())
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
    settings = settings.model_copy(update={"retention_days": 30})
    await run_retention(db, settings, NOW)
    async with db.transaction() as session:
        remaining = list(
            (await session.scalars(select(HandlerRun.event_seq).order_by(HandlerRun.event_seq))).all()
        )
    assert remaining == seqs[3:]


@pytest.mark.parametrize("backend", ["aiosqlite"])
async def test_ingestion_goes_on_between_retention_chunks(settings, db):
    """Retention holds the (single SQLite) writer for one chunk at a time, so ingestion is not held up.

    Run against 20 chunks of deletes, 10 single-event ingest transactions all finish first: each
    waits for one chunk at most. A retention in one long transaction would finish first instead.
    """
    await store_events(db, 0, 200, timedelta(days=40))
    settings = settings.model_copy(update={"retention_days": 30, "retention_chunk_size": 10})
    finished: list[str] = []

    async def retain() -> None:
        result = await run_retention(db, settings, NOW)
        assert result["event_chunks"] == 20
        finished.append("retention")

    async def ingest() -> None:
        await asyncio.sleep(0)  # let retention take the writer first
        for n in range(10):
            await store_events(db, 1000 + n, 1, timedelta(0), source="/new")
        finished.append("ingestion")

    await asyncio.gather(retain(), ingest())
    assert finished == ["ingestion", "retention"]
    assert await event_ids(db) == [f"evt-{n}" for n in range(1000, 1010)]


@pytest.mark.parametrize("backend", ["asyncpg", "aiomysql", "aiosqlite"])
def test_retention_command(settings, tmp_path, monkeypatch):
    """`eventworker retention` applies both retentions once and prints the counts."""

    async def prepare() -> None:
        database = Database.from_settings(settings)
        try:
            await store_events(database, 0, 9, timedelta(days=40))
            await store_dead_letters(database, "old", 4, timedelta(days=40))
        finally:
            await database.dispose()

    asyncio.run(prepare())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("EVENTWORKER_RETENTION_DAYS", "30")
    monkeypatch.setenv("EVENTWORKER_DEAD_LETTER_RETENTION_DAYS", "30")
    monkeypatch.setenv("EVENTWORKER_RETENTION_CHUNK_SIZE", "4")
    result = CliRunner().invoke(retention_command, [])
    assert result.exit_code == 0, result.output
    assert result.output == "events: deleted 9 in 3 chunks\ndead letters: deleted 4 in 1 chunk\n"


def test_retention_command_says_when_retention_is_off(tmp_path, monkeypatch):
    """With no retention configured the command says so and connects nowhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    result = CliRunner().invoke(retention_command, [])
    assert result.exit_code == 0
    assert "retention is off" in result.output
