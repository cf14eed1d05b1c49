"""A worker killed mid-batch, and a worker told to stop: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
import pytest
import redis.asyncio as aioredis
from faults.conftest import FaultRow
from faults.harness import Ledger, Stream, backends, in_progress, log_lines, pg_dsn, wait_stored

pytestmark = pytest.mark.faults

#: EVENTWORKER_JOB_TIMEOUT in these tests: arq re-runs a job cut off by a kill once its lock
#: expires, job_timeout + 15 s after it started (our limit + 5 s grace + arq's 10 s).
JOB_TIMEOUT = 3
LOCK_S = JOB_TIMEOUT + 15


async def _running(client: aioredis.Redis, ledger: Ledger, within: float = 5) -> list[str]:
    """Jobs of ours a worker holds right now, waiting up to ``within`` seconds for one."""
    deadline = time.monotonic() + within
    while True:
        held = await in_progress(client, ledger.jobs)
        if held or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.005)


async def _just_started(client: aioredis.Redis, ledger: Ledger, within: float = 10) -> list[str]:
    """Wait for a job of ours to start (its lock appears), so that a signal now lands early in it."""
    before = set(await in_progress(client, ledger.jobs))
    deadline = time.monotonic() + within
    while True:
        held = await in_progress(client, ledger.jobs)
        if set(held) - before or time.monotonic() > deadline:
            return held
        before &= set(held)
        await asyncio.sleep(0.002)


async def test_sigkill_mid_batch_while_a_producer_streams(rig, fault_report, soak):
    """SIGKILL, again and again, while jobs run: after recovery each event sent is stored once, as sent."""
    ledger = Ledger()
    env = {"EVENTWORKER_JOB_TIMEOUT": str(JOB_TIMEOUT), "EVENTWORKER_MAX_JOBS": "4"}
    worker = await rig.start_worker(**env)
    db = rig.db()
    client = aioredis.from_url(rig.redis_url)
    kills, cut_off = 0, set()
    async with rig.producer() as producer, Stream(producer, ledger, batch_size=200, pause=0.05) as stream:
        deadline = time.monotonic() + soak
        while kills < 3 or time.monotonic() < deadline:
            await stream.confirmed(len(ledger.jobs) + 3)
            cut_off.update(await _running(client, ledger))  # kill while a job of ours runs: mid-batch
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(10)
            killed_at = time.monotonic()
            kills += 1
            worker = await rig.start_worker(**env)
        await stream.confirmed(len(ledger.jobs) + 10)  # the stream goes on into the recovery
    await client.aclose()
    assert cut_off, "no kill landed while a job ran"

    storage = await wait_stored(db, ledger, within=LOCK_S + 40)
    recovery = time.monotonic() - killed_at
    storage.assert_exactly_once()
    assert storage.stored == ledger.events
    rerun = {
        line["job_id"]
        for w in rig.workers
        for line in log_lines(w.output(), "ingest.stored")
        if line["job_try"] > 1
    }
    assert rerun, "no job cut off by a kill was run again"
    fault_report.add(
        FaultRow(
            f"worker SIGKILLed mid-batch x{kills} (job timeout {JOB_TIMEOUT} s)",
            sent=ledger.inputs,
            events=ledger.events,
            stored=storage.stored,
            duplicated=storage.duplicated,
            lost=len(storage.lost),
            dead_letters=f"{storage.dead_letters}/{storage.dead_letters_expected}",
            recovery_s=recovery,
            note=f"{len(rerun)} jobs cut off and run again once arq's lock expired ({LOCK_S} s)",
        )
    )


async def test_sigterm_finishes_or_hands_back_jobs_and_leaves_no_connection(rig, fault_report, soak):
    """SIGTERM mid-load: exit 0 within the grace period, no connection left, running jobs finish or go back.

    Stops alternate between the default shutdown wait, in which running jobs finish, and a short one
    while the events table is locked, so the running job waits on the database past it: it is cancelled
    and handed back to the queue, to run again at once.
    """
    grace = 10.0
    ledger = Ledger()
    db = rig.db()
    client = aioredis.from_url(rig.redis_url)
    admin = await asyncpg.connect(pg_dsn(rig.database))
    stops, slowest = 0, 0.0
    async with rig.producer() as producer, Stream(producer, ledger, batch_size=200, pause=0.1) as stream:
        deadline = time.monotonic() + soak
        while stops < 2 or time.monotonic() < deadline:
            stuck = stops % 2 == 1
            worker = await rig.start_worker(**({"EVENTWORKER_SHUTDOWN_WAIT": "0.3"} if stuck else {}))
            await stream.confirmed(len(ledger.jobs) + 3)
            lock = admin.transaction()
            if stuck:
                await lock.start()
                await admin.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")  # inserts wait
                await asyncio.sleep(0.3)
            await _running(client, ledger)
            started = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)
            while worker.process.poll() is None:
                assert time.monotonic() - started < grace, "the worker did not stop within the grace period"
                await asyncio.sleep(0.02)
            slowest = max(slowest, time.monotonic() - started)
            stops += 1
            assert worker.process.returncode == 0, worker.output()[-3000:]
            assert await backends(rig.admin_dsn, f"%{rig.application_name}") == []
            if stuck:
                await lock.rollback()
    stopped_at = time.monotonic()
    await admin.close()
    await rig.start_worker()
    # Within less than arq's lock (default job timeout: 75 s): a job cut off without being handed back
    # would still be locked.
    storage = await wait_stored(db, ledger, within=40)
    await client.aclose()
    recovery = time.monotonic() - stopped_at
    storage.assert_exactly_once()
    handed_back = {
        line["job_id"]
        for w in rig.workers
        for line in log_lines(w.output(), "ingest.stored")
        if line["job_try"] > 1
    }
    assert handed_back, "no job stuck on the database was handed back"
    fault_report.add(
        FaultRow(
            f"SIGTERM mid-load x{stops}",
            sent=ledger.inputs,
            events=ledger.events,
            stored=storage.stored,
            duplicated=storage.duplicated,
            lost=len(storage.lost),
            dead_letters=f"{storage.dead_letters}/{storage.dead_letters_expected}",
            recovery_s=recovery,
            note=f"exit 0 within {slowest:.1f} s, no connection left; {len(handed_back)} jobs stuck on a"
            " locked table handed back and run again at once, the others finished",
        )
    )
