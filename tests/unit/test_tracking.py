"""Worker bookkeeping in Redis: heartbeats, running jobs, cron runs; records, staleness, forgetting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.runtime import tracking
from worker.runtime.tracking import CronRun, CronStatus, RunningJob, WorkerBeat

NOW = datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)
QUEUE = "q"


def beat(worker_id: str = "host-a:1", age_s: float = 0, interval_s: float = 10, **extra) -> WorkerBeat:
    host, _, pid = worker_id.rpartition(":")
    options = {
        "worker_id": worker_id,
        "host": host,
        "pid": int(pid),
        "started_at": NOW - timedelta(hours=1),
        "last_heartbeat": NOW - timedelta(seconds=age_s),
        "interval_s": interval_s,
        "jobs_running": 0,
        **extra,
    }
    return WorkerBeat(**options)


def running(job_id: str = "j1", job: str = "ingest_events", deadline_in_s: float = 60) -> RunningJob:
    return RunningJob(job_id, job, "host-a:1", 1, NOW, NOW + timedelta(seconds=deadline_in_s))


@pytest.mark.parametrize(
    ("record", "encode", "decode"),
    [
        (
            beat(jobs_done={"ok": 3, "retry": 1}, metrics_port=9100),
            tracking.encode_beat,
            tracking.decode_beat,
        ),
        (running(), tracking.encode_running, tracking.decode_running),
        (CronRun("update_rollups", "j", "w:1", NOW), tracking.encode_cron, tracking.decode_cron),
        (
            CronRun("update_rollups", "j", "w:1", NOW, NOW + timedelta(seconds=2), "error", "boom"),
            tracking.encode_cron,
            tracking.decode_cron,
        ),
    ],
)
def test_records_survive_their_json(record, encode, decode):
    """Each record reads back equal to what was written, times as aware UTC datetimes."""
    assert decode(encode(record)) == record


@pytest.mark.parametrize(
    ("age_s", "interval_s", "stale"),
    [(0, 10, False), (29.9, 10, False), (30.1, 10, True), (3.5, 1, True), (2.9, 1, False)],
)
def test_a_worker_is_stale_after_three_missed_heartbeats(age_s, interval_s, stale):
    """Staleness is measured in the worker's own heartbeat intervals."""
    assert beat(age_s=age_s, interval_s=interval_s).is_stale(NOW) is stale


def test_cron_statuses_list_every_cron_job_even_one_that_never_ran():
    """Known cron jobs appear in order; a start without a matching finish is running; junk is skipped."""
    start = CronRun("update_rollups", "tick-2", "w:1", NOW)
    done = CronRun("update_rollups", "tick-1", "w:2", NOW - timedelta(minutes=1), NOW, "ok")
    entries = {
        b"update_rollups": tracking.encode_cron(start),
        b"update_rollups:done": tracking.encode_cron(done),
        b"garbage": b"{not json",
    }
    statuses = tracking.cron_statuses(entries, ["update_rollups", "apply_retention"])
    assert statuses == [
        CronStatus("update_rollups", start, done),
        CronStatus("apply_retention", None, None),
    ]
    assert statuses[0].running
    assert not statuses[1].running
    assert not CronStatus("x", start, CronRun("x", "tick-2", "w:1", NOW, NOW, "ok")).running


def test_records_long_gone_are_forgotten():
    """Workers silent and jobs overdue for more than FORGET_AFTER_S are picked for removal, others kept."""
    old = tracking.FORGET_AFTER_S + 1
    beats = {"a:1": beat("a:1", age_s=old), "b:2": beat("b:2", age_s=40)}
    runs = {"j1": running("j1", deadline_in_s=-old), "j2": running("j2", deadline_in_s=-10)}
    assert tracking.forgotten(beats, runs, NOW) == (["a:1"], ["j1"])


async def test_heartbeats_are_written_read_pruned_and_removed(redis):
    """A heartbeat stores the record, drops records long gone, and a clean stop removes the worker."""
    old = tracking.FORGET_AFTER_S + 5
    await tracking.write_heartbeat(redis, QUEUE, beat("gone:1", age_s=old))
    await tracking.job_started(redis, QUEUE, running("lost", deadline_in_s=-old), cron=False)
    await tracking.write_heartbeat(redis, QUEUE, beat("b:2"))
    await tracking.write_heartbeat(redis, QUEUE, beat("a:1", jobs_running=2))
    assert [b.worker_id for b in await tracking.read_workers(redis, QUEUE)] == ["a:1", "b:2"]
    assert await tracking.read_running(redis, QUEUE) == []
    assert 0 < await redis.ttl(tracking.workers_key(QUEUE)) <= tracking.FORGET_AFTER_S
    await tracking.remove_worker(redis, QUEUE, "a:1")
    assert [b.worker_id for b in await tracking.read_workers(redis, QUEUE)] == ["b:2"]


async def test_a_job_is_running_from_its_start_to_its_end(redis):
    """A started job is listed as running with its worker; once finished it is gone; no cron record."""
    run = running("j1")
    await tracking.job_started(redis, QUEUE, run, cron=False)
    assert await tracking.read_running(redis, QUEUE) == [run]
    await tracking.job_finished(redis, QUEUE, run, cron=False, outcome="ok", error=None, now=NOW)
    assert await tracking.read_running(redis, QUEUE) == []
    assert await tracking.read_cron(redis, QUEUE, []) == []


async def test_a_cron_job_keeps_its_last_start_and_its_last_outcome(redis):
    """A cron job's start and end are kept apart; the error is cut to MAX_ERROR_CHARS."""
    run = running("tick-1", job="update_rollups")
    await tracking.job_started(redis, QUEUE, run, cron=True)
    [status] = await tracking.read_cron(redis, QUEUE, ["update_rollups"])
    assert status.running
    assert status.last_start == CronRun("update_rollups", "tick-1", "host-a:1", NOW)
    later = NOW + timedelta(seconds=3)
    await tracking.job_finished(redis, QUEUE, run, cron=True, outcome="error", error="x" * 900, now=later)
    [status] = await tracking.read_cron(redis, QUEUE, ["update_rollups"])
    assert not status.running
    assert status.last_finished is not None
    assert (status.last_finished.outcome, status.last_finished.finished_at) == ("error", later)
    assert status.last_finished.error == "x" * tracking.MAX_ERROR_CHARS
