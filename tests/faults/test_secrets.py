"""Passwords in the database and Redis URLs appear nowhere: logs, errors, job results, stored rows.

The rig scans, after every test of this tier, each worker's output, each command's output, every
value in its Redis servers and the failed jobs and dead letters for every password it knows. This
test walks the paths a password is most likely to take: failures to connect, failed jobs, retries
after dropped connections, and the commands that print URLs or errors.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from faults.harness import Ledger, exit_code, free_port, terminate_backends, wait_stored
from support import WorkerProcess, put_raw_job

from worker.config import load_settings

pytestmark = pytest.mark.faults

WRONG_REDIS_PASSWORD = "wrongRedis-pw-5c1"
DB_PASSWORD_ON_A_MISSING_DATABASE = "missingDb-pw-0b7"


async def test_passwords_never_leak(rig, fault_report):
    """Connect failures, failed jobs, dropped connections and every command: no password in any of it."""
    rig.secrets += [WRONG_REDIS_PASSWORD, DB_PASSWORD_ON_A_MISSING_DATABASE]
    server = rig.own_redis()
    wrong_redis = server.url.replace(server.password, WRONG_REDIS_PASSWORD)
    missing_db = rig.database_url.replace(rig.database, "ew_no_such_database").replace(
        ":pgF4ult", f":{DB_PASSWORD_ON_A_MISSING_DATABASE}"
    )
    assert DB_PASSWORD_ON_A_MISSING_DATABASE in missing_db

    # Workers that cannot connect, each way.
    refused = [
        WorkerProcess(rig.env(REDIS_URL=wrong_redis), rig.tmp / "wrong-redis.log"),
        WorkerProcess(
            rig.env(DATABASE_URL=missing_db, EVENTWORKER_STARTUP_WAIT="1"), rig.tmp / "missing-db.log"
        ),
    ]
    rig.workers += refused
    for process in refused:
        assert await exit_code(process, within=60, failure="the worker did not give up") != 0

    # A working worker: a dead letter, a failed job, retries after dropped connections.
    worker = await rig.start_worker(EVENTWORKER_MAX_TRIES="2")
    db = rig.db()
    ledger = Ledger()
    config = load_settings(database_url=rig.database_url, redis_url=rig.redis_url, queue_name=rig.queue)
    async with rig.producer() as producer:
        for _ in range(5):
            batch = ledger.batch(300, invalid=True)
            ledger.confirm(await producer.emit_batch(batch), batch)
            await terminate_backends(rig.admin_dsn, rig.database)
        await put_raw_job(config, b'{"t":1,"f":"ingest_events","a":[],"k":{"x":1},"et":1}')
        await put_raw_job(config, b"\x80\x04 not a job")
    storage = await wait_stored(db, ledger, within=30)
    assert storage.lost == []
    deadline = time.monotonic() + 30
    while storage.failed_jobs == 0:
        assert time.monotonic() < deadline, "the job with wrong arguments was not recorded"
        await asyncio.sleep(0.2)
        storage = await wait_stored(db, ledger, within=1)

    # Every command a person runs against it, and the ones that fail.
    commands = [
        ("failed", "list", "--json"),
        ("dead-letters", "--json"),
        ("config",),
        ("check",),
        ("status",),
    ]
    for args in commands:
        rig.cli(*args)
    nobody = f"redis://:{server.password}@127.0.0.1:{free_port()}/0"  # the real password, nothing there
    for url in (wrong_redis, nobody):
        assert rig.cli("enqueue", "-", stdin=b'{"specversion": "1.0"}\n', REDIS_URL=url).returncode == 1
    rig.cli("status", REDIS_URL=nobody)
    assert rig.cli("failed", "list", DATABASE_URL=missing_db).returncode == 1
    assert worker.process.poll() is None
    fault_report.record(
        "passwords in URLs (real Redis password)",
        ledger,
        storage,
        recovery_s=None,
        note=f"{len(rig.outputs)} command outputs and {len(rig.workers)} worker logs (2 refused to start)"
        " scanned with Redis values and stored rows: no password anywhere",
    )


WRONG_SENTINEL_PASSWORD = "wrongSentinel-pw-2e7"


async def test_passwords_in_sentinel_urls_never_leak(rig, sentinel_group, fault_report):
    """A Sentinel URL holds two passwords (the nodes' and sentinel_password): refused connections either
    way, a failover under a working worker, and every command show neither."""
    rig.redis_url = sentinel_group.url()
    rig.secrets += [*sentinel_group.secrets, WRONG_SENTINEL_PASSWORD, WRONG_REDIS_PASSWORD]
    wrong_sentinel = rig.redis_url.replace(sentinel_group.secrets[1], WRONG_SENTINEL_PASSWORD)
    wrong_node = rig.redis_url.replace(sentinel_group.secrets[0], WRONG_REDIS_PASSWORD)
    quick = {"EVENTWORKER_REDIS_RETRY_WINDOW": "1"}
    refused = [
        WorkerProcess(rig.env(REDIS_URL=wrong_sentinel, **quick), rig.tmp / "wrong-sentinel.log"),
        WorkerProcess(rig.env(REDIS_URL=wrong_node, **quick), rig.tmp / "wrong-node.log"),
    ]
    rig.workers += refused
    for process in refused:
        assert await exit_code(process, within=60, failure="the worker did not give up") != 0

    worker = await rig.start_worker()
    db = rig.db()
    ledger = Ledger()
    async with rig.producer(retries=12) as producer:
        batch = ledger.batch(200, invalid=True)
        ledger.confirm(await producer.emit_batch(batch), batch)
        old = sentinel_group.kill_primary()  # reconnects, retries and their log lines
        await asyncio.to_thread(sentinel_group.wait_promoted, old)
        batch = ledger.batch(200, invalid=True)
        ledger.confirm(await producer.emit_batch(batch), batch)
    storage = await wait_stored(db, ledger, within=60)
    assert storage.lost == []
    shown = rig.cli("config")
    assert "sentinel_password=***" in shown.stdout
    for args in (("status",), ("check",), ("failed", "list", "--json"), ("dead-letters", "--json")):
        rig.cli(*args)
    for url in (wrong_sentinel, wrong_node):
        assert rig.cli("enqueue", "-", stdin=b'{"specversion": "1.0"}\n', REDIS_URL=url).returncode == 1
        rig.cli("status", REDIS_URL=url)
    assert worker.process.poll() is None
    await asyncio.to_thread(sentinel_group.heal)
    fault_report.record(
        "passwords in Sentinel URLs (node and sentinel passwords)",
        ledger,
        storage,
        recovery_s=None,
        note=f"{len(rig.outputs)} command outputs and {len(rig.workers)} worker logs (2 refused, 1 through"
        " a failover) scanned: neither password anywhere",
    )
