"""A worker's monitor: running jobs and cron outcomes recorded around each try, heartbeats, metric samples.

Bookkeeping must never fail a job: a Redis that errors is logged and ignored.
"""

from __future__ import annotations

import asyncio

import pytest
from arq import Retry
from structlog.testing import capture_logs

from jobs.ingest import ingest_events
from worker.errors import InvalidArgument, JobFailed
from worker.runtime import tracking
from worker.runtime.jobrunner import job
from worker.runtime.metrics import Metrics
from worker.runtime.monitor import Monitor, outcome_of

QUEUE_EVENT = {"specversion": "1.0", "source": "/unit", "type": "t"}


@pytest.fixture
def make_monitor(settings, db, redis):
    def make(redis_client=redis, metrics=None, metrics_port=None) -> Monitor:
        return Monitor(
            settings=settings,
            worker_id="host-a:7",
            redis=redis_client,
            db=db,
            metrics=metrics,
            metrics_port=metrics_port,
            cron_jobs=frozenset({"update_rollups"}),
        )

    return make


class BrokenRedis:
    """A Redis whose every call fails, as when the server is down."""

    def __getattr__(self, name):
        raise ConnectionError(f"redis down ({name})")


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "ok"),
        (Retry(defer=1), "retry"),
        (JobFailed(3, "boom"), "failed"),
        (asyncio.CancelledError(), "cancelled"),
        (ValueError("x"), "error"),
    ],
)
def test_outcome_of_a_try(exc, outcome):
    """Each way a try can end has its name."""
    assert outcome_of(exc) == outcome


async def test_a_running_job_is_recorded_with_its_worker_until_it_ends(
    make_ctx, make_monitor, redis, settings
):
    """While a job runs, Redis says which worker runs it (from the next flush); after it, it is gone."""
    monitor = make_monitor()
    seen = []

    @job
    async def export_orders(ctx):
        seen.append(await tracking.read_running(redis, settings.queue_name))  # not written yet
        await monitor.flush_running()
        seen.append(await tracking.read_running(redis, settings.queue_name))
        return "done"

    assert await export_orders(make_ctx(monitor=monitor, job_id="job-9")) == "done"
    assert seen[0] == []
    assert [(run.job_id, run.job, run.worker_id) for run in seen[1]] == [
        ("job-9", "export_orders", "host-a:7")
    ]
    assert [run.job_id for run in await tracking.read_running(redis, settings.queue_name)] == ["job-9"]
    await monitor.flush_running()
    assert await tracking.read_running(redis, settings.queue_name) == []
    assert monitor.done == {"ok": 1}
    assert monitor.running == {}


async def test_jobs_that_end_before_a_flush_cost_one_heartbeat_together(make_ctx, make_monitor, settings):
    """Short jobs are never written as running: 50 of them cost the flush one heartbeat (their counts)."""
    calls = []

    class CountingRedis:
        def __getattr__(self, name):
            calls.append(name)
            raise ConnectionError(name)

    monitor = make_monitor(redis_client=CountingRedis())

    @job
    async def export_orders(ctx):
        return 1

    for n in range(50):
        await export_orders(make_ctx(monitor=monitor, job_id=f"job-{n}"))
    await monitor.flush_running()
    assert calls == ["pipeline"]  # the heartbeat's read, refused here
    assert monitor.done == {"ok": 50}


async def test_the_flush_after_jobs_ended_writes_their_counts_in_the_heartbeat(
    make_ctx, make_monitor, redis, settings
):
    """`status` sees the jobs done at the next flush, not a heartbeat interval later; no change, no write."""
    monitor = make_monitor()
    await monitor.heartbeat()  # as at start: nothing done yet

    @job
    async def export_orders(ctx):
        return 1

    for n in range(3):
        await export_orders(make_ctx(monitor=monitor, job_id=f"job-{n}"))
    [before] = await tracking.read_workers(redis, settings.queue_name)
    assert before.jobs_done == {}
    await monitor.flush_running()
    [after] = await tracking.read_workers(redis, settings.queue_name)
    assert after.jobs_done == {"ok": 3}
    await redis.delete(tracking.workers_key(settings.queue_name))
    await monitor.flush_running()  # nothing new done: the record is not written again
    assert await tracking.read_workers(redis, settings.queue_name) == []


async def test_running_jobs_not_written_for_a_redis_error_are_written_later(
    make_ctx, make_monitor, redis, settings
):
    """A flush that fails keeps what it had to write; the next one writes it, and removes ended jobs."""
    monitor = make_monitor(redis_client=BrokenRedis())
    release = asyncio.Event()

    @job
    async def export_orders(ctx):
        await release.wait()

    running = asyncio.create_task(export_orders(make_ctx(monitor=monitor, job_id="job-long")))
    await asyncio.sleep(0.01)
    with capture_logs() as logs:
        await monitor.flush_running()
    assert [line["step"] for line in logs if line["event"] == "monitor.redis_failed"] == ["running"]
    monitor.redis = redis  # Redis is back
    await monitor.flush_running()
    assert [run.job_id for run in await tracking.read_running(redis, settings.queue_name)] == ["job-long"]
    release.set()
    await running
    await monitor.flush_running()
    assert await tracking.read_running(redis, settings.queue_name) == []


async def test_a_cron_job_records_how_its_last_run_ended(make_ctx, make_monitor, redis, settings):
    """A cron job's failed try is kept with the error that caused the retry."""
    monitor = make_monitor()

    @job
    async def update_rollups(ctx):
        raise RuntimeError("checkpoint table is on fire")

    with pytest.raises(Retry):
        await update_rollups(make_ctx(monitor=monitor, job_id="update_rollups:1"))
    [cron] = await tracking.read_cron(redis, settings.queue_name, ["update_rollups"])
    assert cron.last_finished is not None
    assert cron.last_finished.outcome == "retry"
    assert cron.last_finished.error == "RuntimeError: checkpoint table is on fire"
    assert monitor.done == {"retry": 1}


async def test_a_permanent_failure_is_recorded_as_failed(make_ctx, make_monitor, redis, settings):
    """A try that ends in the failed-jobs table is counted as failed."""
    monitor = make_monitor()

    @job
    async def update_rollups(ctx):
        raise InvalidArgument("day", "x", "not a date")

    with pytest.raises(JobFailed):
        await update_rollups(make_ctx(monitor=monitor))
    [cron] = await tracking.read_cron(redis, settings.queue_name, ["update_rollups"])
    assert cron.last_finished is not None
    assert cron.last_finished.outcome == "failed"
    assert monitor.done == {"failed": 1}


async def test_redis_errors_never_fail_a_job(make_ctx, make_monitor):
    """With Redis down, jobs still return their results; the bookkeeping failures are logged."""
    monitor = make_monitor(redis_client=BrokenRedis())

    @job
    async def export_orders(ctx):
        await monitor.flush_running()
        return 42

    @job
    async def update_rollups(ctx):  # a cron job: its start and end are written at once
        return 43

    with capture_logs() as logs:
        assert await export_orders(make_ctx(monitor=monitor)) == 42
        assert await update_rollups(make_ctx(monitor=monitor, job_id="update_rollups:1")) == 43
        await monitor.heartbeat()
    steps = [line["step"] for line in logs if line["event"] == "monitor.redis_failed"]
    assert steps == ["running", "job_started", "job_finished", "heartbeat"]
    assert monitor.done == {"ok": 2}


async def test_start_beats_and_stop_removes_the_worker(make_monitor, redis, settings):
    """The heartbeat task writes the worker's record at once; stopping takes it out again."""
    monitor = make_monitor(metrics_port=9100)
    monitor.start()
    try:
        for _ in range(100):
            if await tracking.read_workers(redis, settings.queue_name):
                break
            await asyncio.sleep(0.01)
        [beat] = await tracking.read_workers(redis, settings.queue_name)
    finally:
        await monitor.stop()
    assert (beat.worker_id, beat.host, beat.pid, beat.metrics_port) == ("host-a:7", "host-a", 7, 9100)
    assert beat.interval_s == settings.health_check_interval
    assert await tracking.read_workers(redis, settings.queue_name) == []


async def test_a_sample_sets_the_queue_and_lag_gauges(make_ctx, make_monitor, redis, settings):
    """Queue depth, due jobs, jobs in progress and rollup lag come from Redis and the database."""
    await ingest_events(make_ctx(), [{**QUEUE_EVENT, "id": str(n)} for n in range(4)])
    await redis.zadd(settings.queue_name, {"a": 1000, "b": 2000, "later": 10**15})
    metrics = Metrics()
    monitor = make_monitor(metrics=metrics)
    await monitor.sample()
    value = metrics.registry.get_sample_value
    assert value("eventworker_queue_depth") == 3
    assert value("eventworker_queue_due") == 2
    assert value("eventworker_queue_in_progress") == 0
    assert value("eventworker_queue_oldest_job_age_seconds") > 10**6
    assert value("eventworker_rollup_lag_events") == 4


async def test_a_failing_sample_counts_an_error_and_keeps_the_gauges(make_monitor, db, redis):
    """A sample whose Redis half fails leaves the queue gauges as they were and counts the error."""
    metrics = Metrics()
    metrics.queue_depth.set(7)
    monitor = make_monitor(redis_client=BrokenRedis(), metrics=metrics)
    await monitor.sample()
    value = metrics.registry.get_sample_value
    assert value("eventworker_sample_errors_total", {"source": "redis"}) == 1
    assert value("eventworker_queue_depth") == 7
    assert value("eventworker_rollup_lag_events") == 0


async def test_a_worker_leaves_no_heartbeat_behind_when_it_stops(settings, redis, run_worker):
    """An in-process burst worker registers itself and removes its record when it stops cleanly."""
    await run_worker(settings)
    assert await tracking.read_workers(redis, settings.queue_name) == []
