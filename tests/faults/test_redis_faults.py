"""Redis killed and restarted under load, or gone for good: what the producer and the worker do.

Each test runs a redis-server of its own, so that killing it touches nobody else.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from faults.harness import REDIS_PASSWORD, Ledger, Rounds, exit_code, stored_exactly_once

from worker.errors import EnqueueError

pytestmark = pytest.mark.faults


@pytest.mark.parametrize(
    "persistence",
    [
        pytest.param("aof", id="appendonly-fsync-always"),
        pytest.param("none", id="no-persistence"),
    ],
)
async def test_redis_restarted_mid_load(rig, fault_report, soak, persistence):
    """Redis SIGKILLed and started again while a producer streams and a worker consumes.

    The worker reconnects by itself (same process); the producer rides out the restart by retrying.
    With AOF (fsync always) every job Redis confirmed is stored once. Without persistence the jobs
    queued at the moment of the restart are gone with it; everything else is stored once.
    """
    server = rig.own_redis(appendonly=persistence == "aof")
    worker = await rig.start_worker(EVENTWORKER_MAX_JOBS="2")  # slower than the producer: a backlog
    db = rig.db()
    ledger = Ledger()
    at_risk: set[str] = set()
    restarts = Rounds(2, soak)
    async with rig.stream(ledger, batch_size=500, pause=0.02) as stream:
        for _ in restarts:
            await stream.more(5)
            at_risk.update(ledger.jobs)
            server.kill()
            await asyncio.sleep(0.5)
            server.start()
            restarted_at = time.monotonic()
        await stream.more(10)  # the producer goes on after the restart
    assert worker.process.poll() is None, f"the worker died:\n{worker.output()[-3000:]}"
    assert not stream.errors, f"the producer gave up during a 0.5 s restart: {stream.errors[:2]}"

    may_lose = at_risk if persistence == "none" else set()
    storage = await stored_exactly_once(db, ledger, within=40, may_lose=may_lose)
    recovery = time.monotonic() - restarted_at
    kind = "AOF, fsync always" if persistence == "aof" else "no persistence"
    if persistence == "aof":
        assert storage.stored == ledger.events
        note = "every job Redis confirmed was stored; worker and producer reconnected by themselves"
    else:
        note = (
            "lost = jobs queued in Redis when it died (no persistence); all later ones stored;"
            " worker and producer reconnected by themselves"
        )
    fault_report.record(
        f"Redis SIGKILLed and restarted x{restarts.done} ({kind})",
        ledger,
        storage,
        recovery_s=recovery,
        note=note,
        lost=ledger.events - storage.stored,  # with no persistence, the jobs Redis lost count too
    )


async def test_redis_down_for_good(rig, fault_report):
    """Redis gone: the producer raises a clear EnqueueError after its tries, a worker exits after its window.

    The error names the job id and the Redis URL without its password; enqueueing the same batch
    again under that id once Redis is back stores it once. `eventworker enqueue` fails in one line.
    """
    server = rig.own_redis()
    patient = await rig.start_worker()
    impatient = await rig.start_worker(EVENTWORKER_REDIS_RETRY_WINDOW="1")
    db = rig.db()
    ledger = Ledger()
    async with rig.producer(retries=2, retry_delay=0.05) as producer:
        batch = ledger.batch(100)
        ledger.confirm(await producer.emit_batch(batch), batch)
        await stored_exactly_once(db, ledger, within=20)  # no persistence: before the kill
        server.kill()
        started = time.monotonic()
        batch = ledger.batch(100, invalid=True)
        with pytest.raises(EnqueueError) as caught:
            await producer.emit_batch(batch)
        gave_up_after = time.monotonic() - started
        error = caught.value
        assert REDIS_PASSWORD not in str(error)
        assert f"redis://:***@127.0.0.1:{server.port}/0" in str(error)
        assert error.job_id in str(error)
        assert "after 3 tries" in str(error)

        (rig.tmp / "events.ndjson").write_text('{"specversion": "1.0"}\n')
        command = rig.cli("enqueue", str(rig.tmp / "events.ndjson"))
        assert command.returncode == 1
        shown = f"redis://:***@127.0.0.1:{server.port}/0"
        assert command.stderr.splitlines()[-1].startswith(
            f"eventworker: could not connect to Redis at {shown}"
        )
        assert REDIS_PASSWORD not in command.stderr

        # The worker with a 1 s window gives up and exits.
        assert await exit_code(impatient, within=30, failure="a worker without Redis did not exit") != 0
        assert patient.process.poll() is None, "the worker with the default 30 s window gave up"

        server.start()
        again = await producer.emit_batch(batch, job_id=error.job_id)  # safe: same id, same batch
        assert again == error.job_id
        assert await producer.emit_batch(batch, job_id=error.job_id) == error.job_id  # and idempotent
        ledger.confirm(again, batch)
    storage = await stored_exactly_once(db, ledger, within=30)
    assert patient.process.poll() is None
    fault_report.record(
        "Redis down for good, then back",
        ledger,
        storage,
        recovery_s=None,
        note=f"EnqueueError after {gave_up_after:.1f} s (3 tries), re-sent under its job id: stored once;"
        " a worker with a 1 s retry window exited non-zero, the default one (30 s) waited",
    )
