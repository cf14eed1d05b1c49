"""The job wrapper's decisions, called directly with a worker context on a SQLite file.

A failing job is retried (arq ``Retry`` with a back-off) until its last try, then
recorded in ``failed_jobs`` and ended with ``JobFailed``; permanent failures skip
the retries; a try beyond the last (the job was interrupted every time) only records.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
import structlog
from arq import Retry
from arq.constants import retry_key_prefix
from sqlalchemy import select

from worker.constants import DB_WAITS_PREFIX
from worker.db.models import FailedJob
from worker.errors import DatabaseUnavailable, InvalidArgument, JobFailed
from worker.protocol.redis import memory_pool
from worker.runtime.jobrunner import DB_WAITS_TTL_S, job
from worker.runtime.metrics import Metrics

SECRET = "r3dis-s3cret-pw"


async def failed_jobs(db) -> list[FailedJob]:
    async with db.transaction() as session:
        return list((await session.scalars(select(FailedJob).order_by(FailedJob.id))).all())


def failing(exc: BaseException):
    """A wrapped job that records its calls and raises ``exc``."""
    calls: list[tuple] = []

    @job
    async def export_orders(ctx, *args, **kwargs):
        calls.append((args, kwargs))
        raise exc

    export_orders.calls = calls  # type: ignore[attr-defined]
    return export_orders


async def test_success_returns_the_result_and_binds_the_job_name(make_ctx, db):
    """A job that succeeds returns its result untouched, with its name bound for log lines."""

    @job
    async def rollup(ctx, day, *, dry_run):
        return {"day": day, "dry_run": dry_run, "job": structlog.contextvars.get_contextvars()["job_name"]}

    assert await rollup(make_ctx(), "2024-05-01", dry_run=True) == {
        "day": "2024-05-01",
        "dry_run": True,
        "job": "rollup",
    }
    assert await failed_jobs(db) == []


@pytest.mark.parametrize(
    ("exc", "job_try"),
    [
        (RuntimeError("boom"), 1),
        (RuntimeError("boom"), 2),
        (ConnectionRefusedError(111, "Connection refused"), 1),
        (DatabaseUnavailable("restarting"), 2),
    ],
)
async def test_failure_before_the_last_try_is_retried(make_ctx, db, exc, job_try):
    """Before the last try, a failure raises arq Retry deferred by the back-off, and records nothing."""
    export_orders = failing(exc)
    with pytest.raises(Retry) as caught:
        await export_orders(make_ctx(job_try=job_try), [1, 2])
    delay = 0.01 * 2 ** (job_try - 1)  # settings: retry_base_delay 0.01, cap 0.04
    assert delay / 2 * 1000 <= caught.value.defer_score <= delay * 1000
    assert caught.value.__cause__ is exc
    assert export_orders.calls == [(([1, 2],), {})]
    assert await failed_jobs(db) == []


async def test_failure_on_the_last_try_is_recorded(make_ctx, db, settings):
    """On the last try a failure is recorded in failed_jobs with name, arguments, error and tries."""
    export_orders = failing(RuntimeError("boom"))
    with pytest.raises(JobFailed) as caught:
        await export_orders(make_ctx(job_try=settings.max_tries, job_id="job-7"), [1, 2], region="eu")
    [record] = await failed_jobs(db)
    assert caught.value.failed_job_id == record.id
    assert (record.job_id, record.job_name, record.tries) == ("job-7", "export_orders", 3)
    assert record.error == "unexpected, last of 3 tries: RuntimeError: boom"
    assert orjson.loads(record.args) == {"args": [[1, 2]], "kwargs": {"region": "eu"}}
    assert record.requeued_at is None
    assert f"failed job {record.id}" in str(caught.value)


@pytest.mark.parametrize("exc", [InvalidArgument("window", "1x", "not a duration"), JobFailed(1, "x")])
async def test_permanent_failure_is_recorded_on_the_first_try(make_ctx, db, exc):
    """A permanent error is not retried: it is recorded at once."""
    export_orders = failing(exc)
    with pytest.raises(JobFailed):
        await export_orders(make_ctx(job_try=1))
    [record] = await failed_jobs(db)
    assert record.tries == 1
    assert record.error.startswith(f"permanent: {type(exc).__name__}: ")


async def test_try_beyond_the_last_only_records(make_ctx, db, settings):
    """A try after the last (the job was killed every time) records the job without running it."""
    export_orders = failing(RuntimeError("never raised"))
    with pytest.raises(JobFailed):
        await export_orders(make_ctx(job_try=settings.max_tries + 1), "payload")
    assert export_orders.calls == []
    [record] = await failed_jobs(db)
    assert record.error == "interrupted on every try (worker killed or timed out)"
    assert record.tries == settings.max_tries
    assert orjson.loads(record.args) == {"args": ["payload"], "kwargs": {}}


async def test_job_timeout_is_retried_then_recorded(make_settings, db, make_ctx):
    """A job outliving job_timeout is cancelled and retried; on its last try it is recorded as a timeout."""
    settings = make_settings(job_timeout=0.05)

    @job
    async def slow(ctx):
        await asyncio.sleep(10)

    with pytest.raises(Retry):
        await slow(make_ctx(settings=settings, job_try=1))
    with pytest.raises(JobFailed):
        await slow(make_ctx(settings=settings, job_try=settings.max_tries))
    [record] = await failed_jobs(db)
    assert record.error == "timeout, last of 3 tries: TimeoutError: "


async def test_recorded_error_has_no_secrets(make_settings, db, make_ctx):
    """The error kept in failed_jobs has URL passwords and configured secrets replaced by ***."""
    settings = make_settings(redis_url=f"redis://:{SECRET}@cache.example.com:6379/0")
    export_orders = failing(RuntimeError(f"lost redis://:{SECRET}@cache.example.com; password {SECRET}"))
    with pytest.raises(JobFailed):
        await export_orders(make_ctx(settings=settings, job_try=settings.max_tries))
    [record] = await failed_jobs(db)
    assert SECRET not in record.error
    assert record.error.endswith("RuntimeError: lost redis://:***@cache.example.com; password ***")


async def test_long_error_is_cut(make_ctx, db, settings):
    """A huge error message is kept to 10,000 characters."""
    export_orders = failing(ValueError("bad value " * 5_000))
    with pytest.raises(JobFailed):
        await export_orders(make_ctx(job_try=settings.max_tries))
    [record] = await failed_jobs(db)
    assert len(record.error) == 10_000


async def test_failure_that_cannot_be_recorded_is_retried(make_ctx, unreachable_db, settings):
    """When failed_jobs cannot be written (database unreachable), the job is retried, not lost."""
    export_orders = failing(RuntimeError("boom"))
    with pytest.raises(Retry) as caught:
        await export_orders(make_ctx(db=unreachable_db, job_try=settings.max_tries))
    assert caught.value.defer_score is not None
    assert 0 < caught.value.defer_score <= 40


async def test_a_try_that_met_no_database_is_given_back(make_ctx, db, settings):
    """arq's try counter is decremented for it, so even past max_tries the job waits instead of failing.

    The back-off grows with the count of such tries, kept in Redis beside arq's own counter.
    """
    redis = memory_pool()
    retry_key, waits_key = retry_key_prefix + "job-db", DB_WAITS_PREFIX + "job-db"
    await redis.set(retry_key, settings.max_tries)  # arq counted this try: it is the last
    export_orders = failing(DatabaseUnavailable("the database system is shutting down"))
    delays = []
    for waits in (1, 2, 3):
        with pytest.raises(Retry) as caught:
            await export_orders(make_ctx(job_try=settings.max_tries, job_id="job-db", redis=redis), [1])
        assert int(await redis.get(retry_key)) == settings.max_tries - 1  # given back...
        await redis.incr(retry_key)  # ...and counted again by arq at the next start
        assert int(await redis.get(waits_key)) == waits
        assert 0 < await redis.ttl(waits_key) <= DB_WAITS_TTL_S
        delays.append(caught.value.defer_score)
    assert await failed_jobs(db) == []
    assert delays[0] <= 10 <= delays[1] <= 20 <= delays[2] <= 40  # base 0.01 s, doubling, cap 0.04 s


async def test_other_failures_still_use_up_their_tries(make_ctx, db, settings):
    """Only an unreachable database is given back: any other failure on the last try is recorded."""
    redis = memory_pool()
    await redis.set(retry_key_prefix + "job-x", settings.max_tries)
    with pytest.raises(JobFailed):
        await failing(RuntimeError("boom"))(
            make_ctx(job_try=settings.max_tries, job_id="job-x", redis=redis), [1]
        )
    assert int(await redis.get(retry_key_prefix + "job-x")) == settings.max_tries
    assert await redis.get(DB_WAITS_PREFIX + "job-x") is None
    assert len(await failed_jobs(db)) == 1


def job_counts(metrics: Metrics, name: str) -> dict[str, float]:
    """The job runner's counters for job ``name``, and how many durations it observed (0: never counted)."""

    def sample(metric: str) -> float:
        return metrics.registry.get_sample_value(metric, {"job": name}) or 0.0

    return {
        "started": sample("eventworker_jobs_started_total"),
        "succeeded": sample("eventworker_jobs_succeeded_total"),
        "retried": sample("eventworker_jobs_retried_total"),
        "failed": sample("eventworker_jobs_failed_total"),
        "timed": sample("eventworker_job_duration_seconds_count"),
    }


async def test_metrics_count_each_try_by_how_it_ended(make_ctx, db, unreachable_db, settings):
    """Each try is counted as started and timed, then as succeeded, retried or failed; a try beyond
    the last only counts as failed, and a failure that could not be recorded counts as none of them."""
    metrics = Metrics()

    @job
    async def fine(ctx):
        return "ok"

    assert await fine(make_ctx(metrics=metrics)) == "ok"
    assert job_counts(metrics, "fine") == {
        "started": 1,
        "succeeded": 1,
        "retried": 0,
        "failed": 0,
        "timed": 1,
    }

    export_orders = failing(RuntimeError("boom"))
    with pytest.raises(Retry):
        await export_orders(make_ctx(metrics=metrics, job_try=1))
    with pytest.raises(JobFailed):
        await export_orders(make_ctx(metrics=metrics, job_try=settings.max_tries))
    with pytest.raises(JobFailed):
        await export_orders(make_ctx(metrics=metrics, job_try=settings.max_tries + 1))
    with pytest.raises(Retry):  # on its last try, and failed_jobs cannot be written
        await export_orders(make_ctx(metrics=metrics, db=unreachable_db, job_try=settings.max_tries))
    assert job_counts(metrics, "export_orders") == {
        "started": 3,
        "succeeded": 0,
        "retried": 1,
        "failed": 2,
        "timed": 3,
    }


async def test_a_job_runs_without_metrics(make_ctx, db):
    """Without metrics in its context (a job called directly) a job runs and fails all the same."""
    with pytest.raises(Retry):
        await failing(RuntimeError("boom"))(make_ctx(job_try=1))
