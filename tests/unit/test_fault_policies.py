"""The policies the fault tier relies on, without servers: producer retries, Redis retries, worker options."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import WatchError

from worker.backoff import backoff
from worker.constants import INGEST_JOB
from worker.errors import EnqueueError
from worker.main import ARQ_TRY_LIMIT, CRON_TICK_KEPT_S, worker_settings
from worker.protocol.producer import EventProducer
from worker.protocol.redis import command_retry, redacted, retries_within
from worker.protocol.serialization import deserialize


def event(i: int) -> dict:
    return {"specversion": "1.0", "id": f"e-{i}", "source": "/shop", "type": "order.created"}


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 0.1),  # half of 0.2 fixed ...
        (1, 1.0, 0.2),  # ... half random
        (2, 1.0, 0.4),
        (4, 1.0, 1.6),
        (5, 1.0, 2.0),  # capped
        (500, 0.5, 1.5),  # no overflow
    ],
)
def test_producer_retry_delay(attempt, rand, expected):
    """Back-off between enqueue tries: 0.2 s doubling, capped at 2 s, the second half random."""
    producer = EventProducer()  # connects on entry only: its defaults are what is read here
    delay = backoff(attempt, producer.retry_delay, producer.retry_max_delay, lambda: rand)
    assert delay == pytest.approx(expected)


@pytest.mark.parametrize(("window", "retries"), [(0, 1), (0.1, 1), (1.0, 4), (30.0, 19)])
def test_redis_retries_fill_the_window(window, retries):
    """Reconnects back off 0.1 s doubling to 2 s, as many as the window holds (at least one)."""
    assert retries_within(window) == retries
    assert command_retry(window)._retries == retries


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:s3cret@host/2", "rediss://user:***@host/2"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_redis_urls_are_redacted(url, shown):
    """A Redis URL in a message keeps everything but its password."""
    assert redacted(url) == shown


class FlakyRedis:
    """Wraps the in-process Redis: the first ``failures`` enqueues raise ``error``."""

    def __init__(self, redis, failures: int, error: Exception, reached: bool = False) -> None:
        self.redis, self.failures, self.error, self.reached = redis, failures, error, reached
        self.calls = 0

    async def enqueue_job(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            if self.reached:  # the transaction went through, only its reply was lost
                await self.redis.enqueue_job(*args, **kwargs)
            raise self.error
        return await self.redis.enqueue_job(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.redis, name)


@pytest.mark.parametrize(
    "error", [RedisConnectionError("reset"), OSError(111, "refused"), WatchError("lost")]
)
async def test_emit_batch_retries_until_redis_answers(redis, error):
    """An enqueue that meets an unreachable Redis is tried again, under the same job id."""
    flaky = FlakyRedis(redis, failures=2, error=error)
    async with EventProducer(redis=flaky, retry_delay=0.001) as producer:
        job_id = await producer.emit_batch([event(1)])
    assert flaky.calls == 3
    assert await redis.zrange("arq:queue", 0, -1) == [job_id.encode()]


async def test_a_try_whose_reply_was_lost_is_not_enqueued_twice(redis):
    """A try that reached Redis but lost its reply is recognised by its id and content on the next try."""
    flaky = FlakyRedis(redis, failures=1, error=RedisConnectionError("reply lost"), reached=True)
    async with EventProducer(redis=flaky, retry_delay=0.001) as producer:
        job_id = await producer.emit_batch([event(1)])
    assert await redis.zrange("arq:queue", 0, -1) == [job_id.encode()]
    assert deserialize(await redis.get(f"arq:job:{job_id}"))["a"] == [[event(1)]]


async def test_out_of_tries_is_an_enqueue_error_naming_the_job_and_url(redis):
    """After every try, EnqueueError names the job id and the Redis URL without its password."""
    flaky = FlakyRedis(redis, failures=99, error=RedisConnectionError("Connection refused"))
    producer = EventProducer("redis://:pa55word@cache:6379/0", redis=flaky, retries=2, retry_delay=0.001)
    async with producer:
        with pytest.raises(EnqueueError) as caught:
            await producer.emit([event(1), event(2)])
    error = caught.value
    assert flaky.calls == 3
    assert str(error).startswith(
        f"could not enqueue job {error.job_id} to Redis at redis://:***@cache:6379/0"
    )
    assert "after 3 tries (ConnectionError: Connection refused)" in str(error)
    assert "pa55word" not in str(error)
    assert error.enqueued == []


async def test_the_same_batch_under_the_same_id_is_enqueued_once(redis):
    """A batch re-sent under its job id (after an EnqueueError, say) returns the id, queues nothing new."""
    async with EventProducer(redis=redis) as producer:
        assert await producer.emit_batch([event(1)], job_id="b-1") == "b-1"
        assert await producer.emit_batch([event(1)], job_id="b-1") == "b-1"
        with pytest.raises(ValueError, match="already queued"):
            await producer.emit_batch([event(2)], job_id="b-1")
    assert await redis.zrange("arq:queue", 0, -1) == [b"b-1"]


async def test_a_job_that_already_ran_is_recognised_by_its_result(redis):
    """A batch whose job already ran (only its result is left) is not enqueued again under its id."""
    result = {"t": 1, "f": INGEST_JOB, "a": [[event(1)]], "k": {}, "et": 1, "s": True, "r": {}}
    await redis.set("arq:result:b-2", __import__("orjson").dumps(result))
    async with EventProducer(redis=redis) as producer:
        assert await producer.emit_batch([event(1)], job_id="b-2") == "b-2"
    assert await redis.zcard("arq:queue") == 0


def test_worker_options_for_stopping_retrying_and_cron_ticks(settings):
    """SIGTERM waits for running jobs; arq never drops a job first; each cron tick's result is kept."""
    options = worker_settings(settings)
    assert options["job_completion_wait"] == settings.shutdown_wait
    assert options["max_tries"] == ARQ_TRY_LIMIT > settings.max_tries
    assert {job.keep_result_s for job in options["cron_jobs"]} == {CRON_TICK_KEPT_S}
