"""The database drops every connection mid-load, and more jobs run at once than there are connections."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections import Counter

import asyncpg
import pytest
from faults.harness import (
    Ledger,
    Rounds,
    backends,
    events_locked,
    log_lines,
    pg_dsn,
    stored_exactly_once,
    terminate_backends,
)

pytestmark = pytest.mark.faults


async def test_connections_terminated_mid_load(rig, fault_report, soak):
    """pg_terminate_backend on every connection, repeatedly: jobs retry with back-off, the pool recovers.

    This is what a PostgreSQL restart or failover does to a client. Each event is still stored once,
    the worker process stays up, and every retry is classified as ``database_unavailable``.
    """
    ledger = Ledger()
    worker = await rig.start_worker()
    db = rig.db()
    cuts, states = Rounds(5, soak), Counter()
    async with rig.stream(ledger, batch_size=200, pause=0.1) as stream:
        for _ in cuts:
            await stream.more(2)
            await stream.running(within=1)  # terminate while a job of ours runs
            for _ in range(5):  # a burst, so that some land mid-query and mid-commit
                states.update(await terminate_backends(rig.admin_dsn, rig.database))
                await asyncio.sleep(0.02)
            terminated_at = time.monotonic()
            # Bursts further apart than a job's tries (0.1 s back-off, doubling): a connection loss is
            # retried and stored. An outage outlasting the tries is test_database_down_for_longer.
            await asyncio.sleep(1.5)
        await stream.more(5)  # the producer goes on after the last fault
    storage = await stored_exactly_once(db, ledger, within=40)
    recovery = time.monotonic() - terminated_at
    assert worker.process.poll() is None, "the worker died"
    retries = log_lines(worker.output(), "job.retry")
    assert {line["reason"] for line in retries} <= {"database_unavailable"}, retries
    if states["active"] or states["idle in transaction"]:
        assert retries, "a query was cut off, yet no job was retried"
    fault_report.record(
        f"PostgreSQL connections terminated x{cuts.done}",
        ledger,
        storage,
        recovery_s=recovery,
        note=f"{sum(states.values())} connections cut ({states['active']} mid-query);"
        f" {len(retries)} tries retried as database_unavailable; same worker process throughout",
    )


def _pool_gauges(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.findall(r'^eventworker_db_pool_connections\{state="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {state: float(value) for state, value in found}


async def test_more_concurrent_jobs_than_connections(rig, fault_report, soak):
    """20 jobs at once on 2 connections: they wait, time out clearly, retry; no deadlock, none left open."""
    ledger = Ledger()
    worker = await rig.start_worker(
        EVENTWORKER_MAX_JOBS="20",
        EVENTWORKER_DB_POOL_SIZE="2",
        EVENTWORKER_DB_MAX_OVERFLOW="0",
        EVENTWORKER_DB_POOL_TIMEOUT="0.2",
        EVENTWORKER_MAX_TRIES="20",
        EVENTWORKER_METRICS_PORT="0",
        EVENTWORKER_METRICS_HOST="127.0.0.1",
    )
    port = worker.started()["metrics_listening_on"]
    db = rig.db()
    admin = await asyncpg.connect(pg_dsn(rig.database))
    started = time.monotonic()
    async with rig.producer() as producer:
        for _ in Rounds(1, soak):
            # Two jobs take the pool's two connections and wait on the locked table: the other 18 wait
            # for a connection, longer than the pool timeout.
            async with events_locked(admin):
                for _ in range(60):
                    batch = ledger.batch(300, invalid=len(ledger.confirmed) % 10 == 0)
                    ledger.confirm(await producer.emit_batch(batch), batch)
                await asyncio.sleep(1.5)
            storage = await stored_exactly_once(db, ledger, within=90)
    await admin.close()
    drained = time.monotonic() - started
    assert worker.process.poll() is None
    retries = log_lines(worker.output(), "job.retry")
    assert retries, "no job ever waited too long for a connection"
    assert {line["reason"] for line in retries} == {"database_unavailable"}
    clear = "QueuePool limit of size 2 overflow 0 reached, connection timed out, timeout 0.20"
    assert all(clear in line["error"] for line in retries), retries[0]
    # Nothing checked out once the load is gone: the pool's own count, and the server's view.
    await asyncio.sleep(0.5)
    gauges = _pool_gauges(port)
    assert gauges["checked_out"] == 0, gauges
    assert gauges["size"] == 2, gauges
    connections = await backends(rig.admin_dsn, f"%{rig.application_name}")
    assert len(connections) <= 2, connections
    assert {state for _, state in connections} <= {"idle"}, connections
    fault_report.record(
        "20 concurrent jobs, pool of 2, pool timeout 0.2 s",
        ledger,
        storage,
        recovery_s=drained,
        note=f"{len(retries)} pool timeouts retried as database_unavailable; no deadlock; afterwards 0"
        f" checked out, {len(connections)} idle connections",
    )


async def _allow_connections(admin_dsn: str, database: str, allowed: bool) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
    finally:
        await connection.close()


async def _outage(rig, seconds: float) -> float:
    """Refuse new connections to the test database and cut the open ones, for ``seconds``."""
    await _allow_connections(rig.admin_dsn, rig.database, False)
    try:
        await terminate_backends(rig.admin_dsn, rig.database)
        await asyncio.sleep(seconds)
    finally:
        await _allow_connections(rig.admin_dsn, rig.database, True)
    return time.monotonic()


async def test_database_down_for_longer_than_the_tries(rig, fault_report, soak):
    """An outage outlasting every try drops nothing and needs no one: jobs wait for the database.

    The database refuses connections (what a long restart does) while the producer streams. A try
    that meets no database is given back to arq, so no job runs out of tries: once the database is
    back every event is stored exactly once, nothing is in failed_jobs, nobody requeued anything.
    """
    ledger = Ledger()
    down_for = max(4.0, soak / 4)
    worker = await rig.start_worker(EVENTWORKER_MAX_TRIES="3", EVENTWORKER_RETRY_MAX_DELAY="0.5")
    db = rig.db()
    async with rig.stream(ledger, batch_size=200, pause=0.1) as stream:
        await stream.confirmed(3)
        back_at = await _outage(rig, down_for)
        await stream.more(3)
    storage = await stored_exactly_once(db, ledger, within=40)
    recovery = time.monotonic() - back_at
    assert worker.process.poll() is None
    assert storage.failed_jobs == 0
    waits = [line for line in log_lines(worker.output(), "job.retry") if line.get("try_counted") is False]
    assert waits, "no try met the outage: the test proved nothing"
    most = max(line["database_waits"] for line in waits)
    assert most > 3, f"no job waited past its {3} tries ({most} waits at most): the outage was too short"
    fault_report.record(
        f"PostgreSQL refusing connections for {down_for:.0f} s (3 tries, back-off cap 0.5 s)",
        ledger,
        storage,
        recovery_s=recovery,
        note=f"{len(waits)} tries met no database and were given back (up to {most} per job);"
        " 0 failed jobs, nothing requeued",
    )
