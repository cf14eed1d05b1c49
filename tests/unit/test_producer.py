"""The producer: splitting lists into jobs and enqueueing them as plain arq jobs in JSON."""

from __future__ import annotations

import itertools
import subprocess
import sys
from types import MappingProxyType

import orjson
import pytest
from arq.jobs import Job

from worker.constants import DEFAULT_QUEUE, INGEST_JOB
from worker.protocol.events import CloudEvent
from worker.protocol.producer import EventProducer, batches
from worker.protocol.serialization import deserialize


def event(i: int) -> dict:
    return {"specversion": "1.0", "id": f"e-{i}", "source": "/shop", "type": "order.created"}


@pytest.mark.parametrize(
    ("items", "size", "expected"),
    [
        ([1, 2, 3, 4, 5], 2, [[1, 2], [3, 4], [5]]),
        ([1, 2, 3, 4], 2, [[1, 2], [3, 4]]),
        ([1, 2, 3], 5, [[1, 2, 3]]),
        ([1, 2, 3], 1, [[1], [2], [3]]),
        ([], 3, []),
        (iter("abc"), 2, [["a", "b"], ["c"]]),
    ],
)
def test_batches_sizes(items, size, expected):
    """Consecutive lists of at most size items, in order, the last one shorter."""
    assert list(batches(items, size)) == expected


@pytest.mark.parametrize("size", [0, -1])
def test_batches_refuses_size_below_one(size):
    """A batch size under 1 is a ValueError."""
    with pytest.raises(ValueError, match="at least 1"):
        list(batches([1], size))


def test_batches_is_lazy():
    """Batches are taken from the iterable as needed, so an endless generator works."""
    assert next(batches(itertools.count(), 3)) == [0, 1, 2]


def test_batches_converts_events_to_json():
    """CloudEvent models become their JSON form, mappings become dicts, anything else is kept as is."""
    model = CloudEvent.model_validate({**event(1), "time": "2024-05-01T10:30:00+00:00", "traceid": "t1"})
    items = [model, MappingProxyType(event(2)), "not an event", 7, None, [event(3)]]
    [batch] = batches(items, 10)
    assert batch == [
        {**event(1), "time": "2024-05-01T10:30:00Z", "traceid": "t1"},
        event(2),
        "not an event",
        7,
        None,
        [event(3)],
    ]
    assert type(batch[1]) is dict


def test_producer_refuses_batch_size_below_one():
    """EventProducer(batch_size=0) is a ValueError."""
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        EventProducer(batch_size=0)


async def test_emit_splits_into_jobs_in_json(redis):
    """1234 events with batch_size 500 are 3 ingest_events jobs of 500, 500 and 234 events, stored as JSON."""
    events = [event(i) for i in range(1234)]
    async with EventProducer(redis=redis, batch_size=500) as producer:
        job_ids = await producer.emit(events)
    assert len(job_ids) == len(set(job_ids)) == 3
    sent = []
    for job_id, size in zip(job_ids, [500, 500, 234], strict=True):
        info = await Job(job_id, redis, _deserializer=deserialize).info()
        assert info is not None
        assert info.function == INGEST_JOB
        assert info.kwargs == {}
        [chunk] = info.args
        assert len(chunk) == size
        sent.extend(chunk)
        raw = await redis.get(f"arq:job:{job_id}")
        assert not raw.startswith(b"\x80")  # a pickle starts with the PROTO opcode
        stored = orjson.loads(raw)
        assert stored["f"] == INGEST_JOB
        assert stored["a"] == [chunk]
        assert stored["k"] == {}
    assert sent == events
    assert set(await redis.zrange(DEFAULT_QUEUE, 0, -1)) == {job_id.encode() for job_id in job_ids}


async def test_emit_to_another_queue(redis):
    """Jobs go to the producer's queue_name."""
    async with EventProducer(redis=redis, queue_name="orders") as producer:
        [job_id] = await producer.emit([event(1)])
    assert await redis.zrange("orders", 0, -1) == [job_id.encode()]
    assert await redis.zcard(DEFAULT_QUEUE) == 0


async def test_emit_nothing(redis):
    """Emitting no events enqueues no job."""
    async with EventProducer(redis=redis) as producer:
        assert await producer.emit([]) == []
    assert await redis.zcard(DEFAULT_QUEUE) == 0


async def test_emit_batch_with_job_id_is_idempotent(redis):
    """A batch enqueued twice under one job id is refused the second time."""
    async with EventProducer(redis=redis) as producer:
        assert await producer.emit_batch([event(1)], job_id="batch-1") == "batch-1"
        with pytest.raises(ValueError, match="'batch-1' is already queued"):
            await producer.emit_batch([event(2)], job_id="batch-1")
    assert orjson.loads(await redis.get("arq:job:batch-1"))["a"] == [[event(1)]]


async def test_producer_outside_async_with():
    """A producer that owns its connection refuses to emit before `async with` and after it."""
    producer = EventProducer("memory://")
    with pytest.raises(RuntimeError, match="inside `async with`"):
        await producer.emit([event(1)])
    async with producer:
        assert producer.redis is not None
    with pytest.raises(RuntimeError, match="inside `async with`"):
        await producer.emit([event(1)])


async def test_producer_leaves_a_given_connection_open(redis):
    """A connection handed to the producer is not closed when the producer exits."""
    async with EventProducer(redis=redis) as producer:
        await producer.emit([event(1)])
    assert producer.redis is redis
    assert await redis.ping()


def test_importing_the_producer_does_not_import_sqlalchemy():
    """An app that only produces events does not load SQLAlchemy (nor the worker's jobs)."""
    code = (
        "import sys, worker.protocol.producer, worker.protocol.events; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'sqlalchemy', 'jobs', 'alembic'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"durability": "fsync"}, "durability must be 'primary' or 'replicated'"),
        ({"durability": "replicated", "replicas": 0}, "replicas must be at least 1"),
        ({"durability": "replicated", "replica_timeout": 0}, "replica_timeout more than 0"),
    ],
)
def test_durability_options_are_checked_at_once(options, says):
    """A durability the producer cannot honour is refused when it is built, not at the first emit."""
    with pytest.raises(ValueError, match=says):
        EventProducer("redis://localhost:6379/0", **options)
