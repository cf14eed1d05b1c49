"""The event statistics report on every database: exact figures, fanned out as serial, a connection each."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import arq
import pytest
from click.testing import CliRunner
from conftest import BACKENDS, PARTITIONED_BACKENDS
from sqlalchemy import text
from support import job_ctx, make_partitions

from jobs.stats import build_report, event_stats
from worker.commands.stats import stats_command
from worker.db.engine import Database
from worker.db.models import DeadLetter, Event
from worker.db.sql import report_sql
from worker.domain.report import Window, percentile
from worker.errors import JobFailed

pytestmark = pytest.mark.integration


@pytest.fixture(params=(*BACKENDS, *PARTITIONED_BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """Every driver, and PostgreSQL with events partitioned by day."""
    return str(request.param)


START = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
WINDOW = Window(START, START + timedelta(hours=1), "1h")
#: (type, source, subject, lag in seconds or None for an event without a time), all inside WINDOW.
INSIDE = [
    ("a.created", "/s1", "order/1", 0.5),
    ("a.created", "/s1", "order/1", 1.0),
    ("a.created", "/s1", "order/1", 1.5),
    ("a.created", "/s2", "order/1", 2.0),
    ("a.created", "/s2", "order/2", 4.0),
    ("b.updated", "/s2", "order/2", 8.0),
    ("b.updated", "/s3", "order/3", 16.25),
    ("b.updated", "/s1", None, -3.0),  # a producer clock ahead of ours
    ("c.deleted", "/s3", None, None),
]
LAGS = [lag for *_, lag in INSIDE if lag is not None]
#: The report_sql functions the report calls, one per query (and session, fanned out).
QUERY_FUNCTIONS = ("window_counts", "lag_sample", "dead_letters_by_reason")


def _event(n: int, received_at: datetime, event_type: str, source: str, subject, lag) -> Event:
    return Event(
        source=source,
        event_id=f"evt-{n}",
        type=event_type,
        specversion="1.0",
        time=None if lag is None else received_at - timedelta(seconds=lag),
        subject=subject,
        received_at=received_at,
    )


def _letter(n: int, reason: str, received_at: datetime) -> DeadLetter:
    return DeadLetter(
        reason=reason, errors=[], raw=b"x", position=n, digest=f"{n:064d}", received_at=received_at
    )


async def store_known_data(db: Database) -> None:
    """The events in INSIDE, a few just outside the window, and dead letters in and out."""
    rows = [_event(n, START + timedelta(minutes=n), *fields) for n, fields in enumerate(INSIDE, start=1)]
    rows += [
        _event(100, START - timedelta(microseconds=1), "a.created", "/s1", "order/9", 1.0),
        _event(101, WINDOW.end, "a.created", "/s1", "order/9", 1.0),  # the end is not in the window
        _event(102, WINDOW.end + timedelta(days=1), "z.other", "/s9", "order/9", 1.0),
    ]
    letters = [_letter(n, "invalid", START + timedelta(seconds=n)) for n in range(3)]
    letters += [_letter(3, "too_large", START), _letter(4, "invalid", START - timedelta(seconds=1))]
    async with db.transaction() as session:
        await make_partitions(session, [row.received_at for row in rows])
        session.add_all([*rows, *letters])


async def test_the_report_has_the_exact_figures_of_the_window(db):
    """Counts by type, source, subject and dead-letter reason are exact; lag percentiles are within 1 ms."""
    await store_known_data(db)
    report = await build_report(db, WINDOW)
    assert report.events == 9
    assert report.by_type == [("a.created", 5), ("b.updated", 3), ("c.deleted", 1)]
    assert report.by_source == [("/s1", 4), ("/s2", 3), ("/s3", 2)]
    assert report.top_subjects == [("order/1", 4), ("order/2", 2), ("order/3", 1)]
    assert report.dead_letters == [("invalid", 3), ("too_large", 1)]
    assert (report.lag.events, report.lag.sampled) == (8, 8)
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert report.lag.percentiles[name] == pytest.approx(percentile(LAGS, q), abs=1e-3)
    assert report.lag.max == pytest.approx(16.25, abs=1e-3)
    assert report.timing.fanned_out
    assert set(report.timing.queries_ms) == {"counts", "lag", "dead_letters"}


async def test_the_fanned_out_report_equals_the_serial_one(db):
    """Run fanned out or one query after another in one session, the report finds the same."""
    await store_known_data(db)
    fanned = await build_report(db, WINDOW)
    serial = await build_report(db, WINDOW, fan_out=False)
    assert fanned.figures() == serial.figures()
    assert (fanned.timing.fanned_out, serial.timing.fanned_out) == (True, False)


def _many_events() -> list[tuple[str, str, str | None, float]]:
    """More types and sources than the report lists (50) and subjects than it ranks (10), with many ties."""
    rows = []
    for n in range(160):
        kind = n % 64 if n < 128 else n % 7  # 64 types; the first 7 once or twice more
        subject = None if n % 5 == 0 else f"subject{n % 23:03d}"
        rows.append((f"type{kind:03d}", f"source{(n * 7) % 71:03d}", subject, (n % 13) * 0.25))
    return rows


def _straightforward(values: list[str | None], limit: int) -> list[tuple[str, int]]:
    """Count, most frequent first, ties by key, the first ``limit``: what each figure means."""
    counted = Counter(value for value in values if value is not None)
    return sorted(counted.items(), key=lambda item: (-item[1], item[0]))[:limit]


@pytest.mark.parametrize("fan_out", [True, False], ids=["fanned-out", "serial"])
async def test_the_report_equals_a_straightforward_computation(db, fan_out):
    """Its counts equal counting the rows one figure at a time, cut at the same place among ties."""
    rows = _many_events()
    stored = [_event(n, START + timedelta(seconds=n), *fields) for n, fields in enumerate(rows)]
    stored.append(_event(1000, WINDOW.end, "type999", "source999", "subject999", 1.0))  # outside
    async with db.transaction() as session:
        await make_partitions(session, [row.received_at for row in stored])
        session.add_all(stored)
    report = await build_report(db, WINDOW, fan_out=fan_out)
    assert report.events == len(rows)
    assert report.by_type == _straightforward([kind for kind, *_ in rows], 50)
    assert report.by_source == _straightforward([source for _, source, *_ in rows], 50)
    assert report.top_subjects == _straightforward([subject for _, _, subject, _ in rows], 10)
    lags = [lag for *_, lag in rows]
    assert (report.lag.events, report.lag.sampled) == (len(lags), len(lags))
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert report.lag.percentiles[name] == pytest.approx(percentile(lags, q), abs=1e-3)


async def test_each_report_counts_its_own_window(db):
    """The counting statement is built once per process; every call still counts its own window."""
    await store_known_data(db)
    later = Window(WINDOW.end, WINDOW.end + timedelta(days=2), "2d")
    first, second, again = [await build_report(db, w) for w in (WINDOW, later, WINDOW)]
    assert (first.events, second.events, again.events) == (9, 2, 9)
    assert second.by_type == [("a.created", 1), ("z.other", 1)]
    assert again.figures() == first.figures()


async def test_an_empty_window_reports_zeros(db):
    """No events in the window: zero counts, empty lists and no percentiles, on every database."""
    report = await build_report(db, WINDOW)
    assert (report.events, report.by_type, report.top_subjects, report.dead_letters) == (0, [], [], [])
    assert report.lag.percentiles == {"p50": None, "p90": None, "p99": None}


async def test_the_lag_sample_is_bounded(db):
    """With more events than the sample size, the percentiles come from a sample of that size."""
    await store_known_data(db)
    report = await build_report(db, WINDOW, sample=3)
    assert report.lag.events == 8
    assert 1 <= report.lag.sampled <= 3
    assert all(min(LAGS) <= value <= max(LAGS) for value in report.lag.percentiles.values() if value)


def _observe(monkeypatch, seen: list[tuple[str, int, int]], barrier: asyncio.Barrier | None) -> None:
    """Make each report query record (name, backend pid, session id), then wait for all the others."""
    for name in QUERY_FUNCTIONS:
        original = getattr(report_sql, name)

        async def observed(session, *args, _name=name, _original=original, **kwargs):
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
            seen.append((_name, pid, id(session)))
            if barrier is not None:  # every query holds its connection until all of them hold one
                async with asyncio.timeout(10):
                    await barrier.wait()
            return await _original(session, *args, **kwargs)

        monkeypatch.setattr(report_sql, name, observed)


async def test_fanned_out_queries_run_at_once_each_on_its_own_connection(pg_settings, monkeypatch):
    """Fanned out, the three queries are in flight together on three sessions and three server backends."""
    db = Database.from_settings(pg_settings.model_copy(update={"db_pool_size": 3}))
    try:
        await store_known_data(db)
        serial = await build_report(db, WINDOW, fan_out=False)
        seen: list[tuple[str, int, int]] = []
        _observe(monkeypatch, seen, asyncio.Barrier(len(QUERY_FUNCTIONS)))
        fanned = await build_report(db, WINDOW)
    finally:
        await db.dispose()
    assert sorted(name for name, _, _ in seen) == sorted(QUERY_FUNCTIONS)
    assert len({pid for _, pid, _ in seen}) == len(QUERY_FUNCTIONS)
    assert len({session for _, _, session in seen}) == len(QUERY_FUNCTIONS)
    assert fanned.figures() == serial.figures()


async def test_the_serial_report_uses_one_session_and_one_connection(pg_db, monkeypatch):
    """Serially, all the queries run in one session on one backend."""
    seen: list[tuple[str, int, int]] = []
    _observe(monkeypatch, seen, None)
    await build_report(pg_db, WINDOW, fan_out=False)
    assert len(seen) == len(QUERY_FUNCTIONS)
    assert len({(pid, session) for _, pid, session in seen}) == 1


async def test_a_one_connection_pool_makes_the_fan_out_wait_not_fail(settings, monkeypatch):
    """With pool_size=1, no overflow and a pool timeout shorter than the report, the queries queue up."""
    tight = settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout": 0.2})
    db = Database.from_settings(tight)
    running = {"now": 0, "most": 0}
    try:
        await store_known_data(db)
        serial = await build_report(db, WINDOW, fan_out=False)
        for name in QUERY_FUNCTIONS:
            original = getattr(report_sql, name)

            async def slow(session, *args, _original=original, **kwargs):
                result = await _original(session, *args, **kwargs)  # the session now holds the one connection
                running["now"] += 1
                running["most"] = max(running["most"], running["now"])
                await asyncio.sleep(0.1)  # three of these outlast the 0.2 s pool timeout
                running["now"] -= 1
                return result

            monkeypatch.setattr(report_sql, name, slow)
        fanned = await build_report(db, WINDOW)
    finally:
        await db.dispose()
    assert running["most"] == 1
    assert fanned.figures() == serial.figures()
    assert fanned.timing.wall_ms >= len(QUERY_FUNCTIONS) * 100


@pytest.mark.parametrize("backend", ["asyncpg", "aiomysql", "aiosqlite"])
async def test_the_stats_job_returns_the_report_as_json(settings, db):
    """event_stats reports the last window as JSON-ready data, fanned out."""
    now = datetime.now(UTC)
    async with db.transaction() as session:
        session.add_all(
            [
                _event(1, now - timedelta(minutes=5), "a.created", "/s1", "x", 1.0),
                _event(2, now - timedelta(hours=2), "a.created", "/s1", "x", 1.0),
            ]
        )
    result = await event_stats(job_ctx(settings, db, "job-stats"), "1h")
    assert json.loads(json.dumps(result)) == result
    assert result["events"] == 1
    assert result["by_type"] == [{"type": "a.created", "count": 1}]
    assert result["window"]["label"] == "1h"
    assert result["timing"]["fanned_out"] is True


@pytest.mark.parametrize("backend", ["asyncpg"])
async def test_a_bad_window_fails_the_job_at_once(settings, db):
    """A window that does not parse is permanent: recorded as a failed job on the first try, naming it."""
    with pytest.raises(JobFailed, match="window='fortnight'"):
        await event_stats(job_ctx(settings, db, "job-stats"), "fortnight")


@pytest.mark.parametrize("backend", ["asyncpg", "aiosqlite"])
async def test_the_stats_command_prints_a_table_or_json(settings, db, monkeypatch):
    """`eventworker stats` prints tables (timing with --verbose); --json the figures as JSON; --serial runs
    them in one session."""
    now = datetime.now(UTC)
    async with db.transaction() as session:
        session.add(_event(1, now - timedelta(minutes=1), "a.created", "/s1", "order/1", 2.0))
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("EVENTWORKER_QUEUE_NAME", settings.queue_name)
    runner = CliRunner()

    def invoke(*args: str):  # the CLI runs its own event loop: give it a thread
        return asyncio.to_thread(runner.invoke, stats_command, list(args))

    table = await invoke("--window", "15m")
    assert table.exit_code == 0, table.output
    assert "events received" in table.output
    assert "a.created" in table.output
    assert "fanned out:" not in table.output  # how the queries ran: only with --verbose
    verbose = await invoke("--window", "15m", "--verbose")
    assert verbose.output.splitlines()[-1].startswith("fanned out: ")
    as_json = await invoke("--json", "--serial")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["events"] == 1
    assert data["top_subjects"] == [{"subject": "order/1", "count": 1}]
    assert data["timing"]["fanned_out"] is False
    bad = await invoke("--window", "soon")
    assert bad.exit_code == 2
    assert "--window" in bad.output


# Server drivers only: a failed aiosqlite connect leaves its thread to report to the CLI's closed loop.
@pytest.mark.parametrize("backend", ["asyncpg", "aiomysql"])
async def test_an_unreachable_database_is_retried_by_the_job_and_one_line_in_the_cli(
    settings, unreachable_url, monkeypatch
):
    """A fanned-out report that cannot connect: the job is retried, the CLI says so in one line."""
    down = Database.from_settings(settings.model_copy(update={"database_url": unreachable_url}))
    try:
        with pytest.raises(arq.Retry):
            await event_stats(job_ctx(settings, down, "job-stats"), "1h")
    finally:
        await down.dispose()
    monkeypatch.setenv("DATABASE_URL", unreachable_url)
    result = await asyncio.to_thread(CliRunner().invoke, stats_command, [])
    assert result.exit_code == 1
    assert result.output.startswith("eventworker: ")
    assert len(result.output.splitlines()) == 1
