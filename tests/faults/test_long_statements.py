"""A worker told to stop in the middle of a long rollup statement: it ends on the server, and in time.

A backfill stores 300,000 events in one transaction, each in a minute of its own (a replay of old
events); a rollup run over them adds some 305,000 bucket rows to ``rollups``, seconds of
``INSERT``. SIGTERM arrives while they go in: once the shutdown wait is over the worker stops the
statement on the server, hands the job back and exits 0, within the wait and a small margin;
nothing it did is kept, the work is done again by the next worker, and the rollups verify. (A
cancelled asyncpg ``executemany`` went on sending its rows: this exit took 59 s.)
"""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
import pytest
from faults.harness import backends, exit_code, pg_dsn

pytestmark = pytest.mark.faults

UPDATE, REBUILD = "update_rollups", "rebuild_rollups"
#: Events of the backfill; with --soak, ten times as many (a minute of rows each way).
ROWS, SOAK_ROWS = 300_000, 3_000_000
SHUTDOWN_WAIT = 0.5
#: What the worker may take past its shutdown wait: cancel, roll back, hand the job back, close.
MARGIN = 2.0

#: One backfill transaction of small events, one a minute back in time, 100 series (20 types x 5 sources).
_BACKFILL = """
INSERT INTO events (source, event_id, type, specversion, time, received_at, job_id)
SELECT '/backfill/' || (g % 5), 'b-' || g, 'com.example.backfill.' || (g % 20), '1.0',
       now() - g * interval '1 minute', now(), 'backfill'
FROM generate_series(1, $1::bigint) AS g
"""


async def _backfill(database: str, rows: int) -> None:
    connection = await asyncpg.connect(pg_dsn(database))
    try:
        await connection.execute(_BACKFILL, rows)
        await connection.execute("ANALYZE events")
    finally:
        await connection.close()


async def _inserting(admin_dsn: str, application_name: str, within: float) -> float:
    """Wait until rows go into ``rollups`` for ``application_name``; return after they have for 0.3 s.

    The rows go in batches, each a statement of its own: what is watched is the first of them.
    """
    deadline = time.monotonic() + within
    connection = await asyncpg.connect(admin_dsn)
    try:
        while time.monotonic() < deadline:
            inserting = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'"
                " AND query LIKE 'INSERT INTO rollups%'",
                application_name,
            )
            if inserting:
                await asyncio.sleep(0.3)
                return 0.3
            await asyncio.sleep(0.02)
    finally:
        await connection.close()
    raise AssertionError("no row went into rollups")


async def _counted(database: str, rows: int, within: float) -> int:
    """The events the minute rollups count, once they count ``rows`` (a cron tick may be counting)."""
    connection = await asyncpg.connect(pg_dsn(database))
    deadline = time.monotonic() + within
    try:
        while True:
            counted = await connection.fetchval("SELECT sum(count) FROM rollups WHERE bucket_seconds = 60")
            if counted == rows or time.monotonic() > deadline:
                return int(counted or 0)
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


#: The job, and the line it logs when it ends.
JOBS = {UPDATE: "rollups.updated", REBUILD: "rollups.rebuilt"}


async def _ended(rig, job_id: str, event: str, within: float) -> list[dict]:
    """The log lines of ``job_id``'s runs that ended, waiting up to ``within`` seconds for one."""
    deadline = time.monotonic() + within
    while not (lines := [line for line in rig.log_lines(event) if line.get("job_id") == job_id]):
        assert time.monotonic() < deadline, f"{job_id} did not run again"
        await asyncio.sleep(0.2)
    return lines


@pytest.mark.parametrize("job", [UPDATE, REBUILD])
async def test_sigterm_mid_rollup_statement_cancels_it_and_hands_the_job_back(rig, fault_report, soak, job):
    """SIGTERM while bucket rows go in: exit 0 within the wait + 2 s, nothing left running, nothing lost.

    ``rebuild_rollups`` (enqueued like any job) runs again on the next worker. ``update_rollups`` is a
    cron job, which arq tries once: the job handed back is not run again, and the next update (the
    next minute's tick) counts what it had left, from the checkpoint.
    """
    rows = SOAK_ROWS if soak else ROWS
    started = time.monotonic()
    await _backfill(rig.database, rows)
    filled = time.monotonic() - started
    # One transaction per run over the whole backfill: the statement is as long as it gets.
    worker = await rig.start_worker(
        EVENTWORKER_SHUTDOWN_WAIT=str(SHUTDOWN_WAIT), EVENTWORKER_ROLLUP_TRANSACTION_ROWS=str(rows)
    )
    job_id = f"{job}:long-{rig.queue}"
    async with rig.producer() as producer:
        assert await producer.redis.enqueue_job(job, _job_id=job_id, _queue_name=rig.queue)
    ran_for = await _inserting(rig.admin_dsn, f"{job}@{rig.application_name}", within=60)
    stopping = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = await exit_code(
        worker, within=SHUTDOWN_WAIT + 30, poll=0.02, failure="the worker did not stop within 30 s"
    )
    took = time.monotonic() - stopping
    assert code == 0, worker.output()[-3000:]
    assert took < SHUTDOWN_WAIT + MARGIN, f"exit took {took:.1f} s"
    assert await backends(rig.admin_dsn, f"%{rig.application_name}") == [], "a statement still runs"
    assert not [line for line in rig.log_lines(JOBS[job]) if line.get("job_id") == job_id], (
        "the job ended within the shutdown wait: the test needs a larger backfill"
    )

    # The next worker, in bounded transactions this time: the job again, or the next update.
    await rig.start_worker()
    if job == REBUILD:
        assert (await _ended(rig, job_id, JOBS[job], within=90))[0]["job_try"] == 2
    else:
        async with rig.producer() as producer:
            await producer.redis.enqueue_job(UPDATE, _job_id=f"{job_id}-next", _queue_name=rig.queue)
        await _ended(rig, f"{job_id}-next", JOBS[job], within=90)
    assert await _counted(rig.database, rows, within=60) == rows, "the rollups do not count every event once"
    verify = rig.cli("rollups", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    from faults.conftest import FaultRow

    fault_report.add(
        FaultRow(
            f"SIGTERM mid-statement of {job} ({rows:,} events stored in one transaction)",
            sent=rows,
            events=rows,
            stored=rows,
            duplicated=0,
            lost=0,
            dead_letters="0/0",
            recovery_s=took,
            note=f"SIGTERM {ran_for:.1f} s into the rows' INSERT; exit 0 {took:.1f} s later (shutdown"
            f" wait {SHUTDOWN_WAIT} s), none left running; nothing lost, rollups verify;"
            f" backfill {filled:.1f} s",
        )
    )
