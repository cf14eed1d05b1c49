"""The producer client: hand events to the worker through Redis.

::

    async with EventProducer("redis://localhost:6379/0") as producer:
        job_ids = await producer.emit(events)

Lists are split into jobs of ``batch_size`` events. The wire format is plain arq
with JSON: job name ``ingest_events``, one positional argument (a list of
CloudEvents as JSON objects), so producers in other languages can enqueue too
(see the README). This module imports arq and pydantic, never SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from types import TracebackType
from typing import Any, Self

from arq.connections import ArqRedis

from worker.constants import DEFAULT_QUEUE, INGEST_JOB
from worker.events import CloudEvent
from worker.redis import connect

EventLike = CloudEvent | Mapping[str, Any] | Any


def _as_json(event: EventLike) -> Any:
    if isinstance(event, CloudEvent):
        return event.to_json_dict()
    if isinstance(event, Mapping):
        return dict(event)
    return event  # not an event at all: the worker keeps it as a dead letter


def batches(events: Iterable[EventLike], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of at most ``size`` events, as JSON-ready values."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    iterator = iter(events)
    while chunk := list(islice(iterator, size)):
        yield [_as_json(event) for event in chunk]


class EventProducer:
    """Enqueues events for eventworker; use as an async context manager."""

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        *,
        queue_name: str = DEFAULT_QUEUE,
        batch_size: int = 500,
        redis: ArqRedis | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.batch_size = batch_size
        self._redis = redis
        self._owns_redis = redis is None

    async def __aenter__(self) -> Self:
        if self._redis is None:
            self._redis = await connect(self.redis_url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._owns_redis and self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)
            self._redis = None

    @property
    def redis(self) -> ArqRedis:
        """The connection; only inside ``async with``."""
        if self._redis is None:
            raise RuntimeError("use EventProducer inside `async with`")
        return self._redis

    async def emit_batch(self, events: list[Any], *, job_id: str | None = None) -> str:
        """Enqueue one ingest job carrying ``events`` as given; return its job id."""
        job = await self.redis.enqueue_job(INGEST_JOB, events, _queue_name=self.queue_name, _job_id=job_id)
        if job is None:
            raise ValueError(f"a job with id {job_id!r} is already queued, running or kept")
        return str(job.job_id)

    async def emit(self, events: Iterable[EventLike]) -> list[str]:
        """Enqueue ``events`` in jobs of ``batch_size``; return the job ids."""
        return [await self.emit_batch(chunk) for chunk in batches(events, self.batch_size)]
