"""A worker killed mid-batch, and a worker told to stop: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import asyncpg
import pytest
from faults.harness import Ledger, Rounds, backends, events_locked, exit_code, pg_dsn, stored_exactly_once

pytestmark = pytest.mark.faults

#: EVENTWORKER_JOB_TIMEOUT in these tests: arq re-runs a job cut off by a kill once its lock
#: expires, job_timeout + 15 s after it started (our limit + 5 s grace + arq's 10 s).
JOB_TIMEOUT = 3
LOCK_S = JOB_TIMEOUT + 15


async def test_sigkill_mid_batch_while_a_producer_streams(rig, fault_report, soak):
    """SIGKILL, again and again, while jobs run: after recovery each event sent is stored once, as sent."""
    ledger = Ledger()
    env = {"EVENTWORKER_JOB_TIMEOUT": str(JOB_TIMEOUT), "EVENTWORKER_MAX_JOBS": "4"}
    worker = await rig.start_worker(**env)
    db = rig.db()
    kills, cut_off = Rounds(3, soak), set()
    async with rig.stream(ledger, batch_size=200, pause=0.05) as stream:
        for _ in kills:
            await stream.more(3)
            cut_off.update(await stream.running())  # kill while a job of ours runs: mid-batch
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(10)
            killed_at = time.monotonic()
            worker = await rig.start_worker(**env)
        await stream.more(10)  # the stream goes on into the recovery
    assert cut_off, "no kill landed while a job ran"

    storage = await stored_exactly_once(db, ledger, within=LOCK_S + 40)
    recovery = time.monotonic() - killed_at
    assert storage.stored == ledger.events
    # A job killed after its commit but before arq wrote its result leaves every event stored: the
    # storage check above passes at once, and the job runs again only when its lock expires.
    rerun = await _reruns(rig, within=LOCK_S + 30)
    assert rerun, "no job cut off by a kill was run again"
    fault_report.record(
        f"worker SIGKILLed mid-batch x{kills.done} (job timeout {JOB_TIMEOUT} s)",
        ledger,
        storage,
        recovery_s=recovery,
        note=f"{len(rerun)} jobs cut off and run again once arq's lock expired ({LOCK_S} s)",
    )


async def _reruns(rig, within: float) -> set[str]:
    """The jobs run again after a kill, waiting up to ``within`` seconds for the first."""
    for _ in range(int(within / 0.5)):
        if rerun := rig.rerun_jobs():
            return rerun
        await asyncio.sleep(0.5)  # the workers' log files are polled: nothing to wait on
    return rig.rerun_jobs()


async def test_sigterm_finishes_or_hands_back_jobs_and_leaves_no_connection(rig, fault_report, soak):
    """SIGTERM mid-load: exit 0 within the grace period, no connection left, running jobs finish or go back.

    Stops alternate between the default shutdown wait, in which running jobs finish, and a short one
    while the events table is locked, so the running job waits on the database past it: it is cancelled
    and handed back to the queue, to run again at once.
    """
    grace = 10.0
    ledger = Ledger()
    db = rig.db()
    admin = await asyncpg.connect(pg_dsn(rig.database))
    stops, slowest = Rounds(2, soak), 0.0
    async with rig.stream(ledger, batch_size=200, pause=0.1) as stream:
        for stop in stops:
            stuck = stop % 2 == 1
            worker = await rig.start_worker(**({"EVENTWORKER_SHUTDOWN_WAIT": "0.3"} if stuck else {}))
            await stream.more(3)
            async with events_locked(admin) if stuck else contextlib.nullcontext():  # inserts wait
                if stuck:
                    await asyncio.sleep(0.3)
                await stream.running()
                started = time.monotonic()
                worker.process.send_signal(signal.SIGTERM)
                code = await exit_code(
                    worker, within=grace, poll=0.02, failure="the worker did not stop within the grace period"
                )
                slowest = max(slowest, time.monotonic() - started)
                assert code == 0, worker.output()[-3000:]
                assert await backends(rig.admin_dsn, f"%{rig.application_name}") == []
    stopped_at = time.monotonic()
    await admin.close()
    await rig.start_worker()
    # Within less than arq's lock (default job timeout: 75 s): a job cut off without being handed back
    # would still be locked.
    storage = await stored_exactly_once(db, ledger, within=40)
    recovery = time.monotonic() - stopped_at
    handed_back = rig.rerun_jobs()
    assert handed_back, "no job stuck on the database was handed back"
    fault_report.record(
        f"SIGTERM mid-load x{stops.done}",
        ledger,
        storage,
        recovery_s=recovery,
        note=f"exit 0 within {slowest:.1f} s, no connection left; {len(handed_back)} jobs stuck on a"
        " locked table handed back and run again at once, the others finished",
    )
