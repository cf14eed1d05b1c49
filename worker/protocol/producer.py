"""The producer client: hand events to the worker through Redis.

::

    async with EventProducer("redis://localhost:6379/0") as producer:
        job_ids = await producer.emit(events)

Lists are split into jobs of ``batch_size`` events. The wire format is plain arq
with JSON: job name ``ingest_events``, one positional argument (a list of
CloudEvents as JSON objects), so producers in other languages can enqueue too
(see docs/producers.md). This module imports arq and pydantic, never SQLAlchemy.

An enqueue that meets an unreachable Redis (a restart, a dropped connection) is tried again
under the same job id, up to 5 more times over 2.5 to 5 s by default (back-off 0.2 s doubling to
2 s, half of it random: ``retries``, ``retry_delay``, ``retry_max_delay``), and is idempotent:
a try whose reply was lost but which reached Redis is recognised by its id and content, so the
job is queued once. When every try failed, :class:`EnqueueError` names the job id and the
Redis URL (password hidden); enqueueing the same batch under that id again is safe. A job
counts as accepted only once ``emit_batch`` returned: what Redis then holds survives a Redis
restart only if Redis persists it (AOF, see docs/concepts.md, "Guarantees").

With ``durability="replicated"`` a job counts as accepted only once ``replicas`` Redis replicas
acknowledged it (``WAIT``, see :mod:`worker.protocol.replicated`): a failover that promotes one of
them keeps it. A job the replicas did not confirm within ``replica_timeout`` seconds is tried again
under the same id (kept as it is if the primary still has it, written again if it was lost), and
after the last try :class:`EnqueueError` is raised: an unconfirmed batch is never reported as sent.

When the application traces with OpenTelemetry and a span is active, each enqueue is a ``send``
span and the events without a ``traceparent`` carry its context (:mod:`worker.tracing.carry`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from types import TracebackType
from typing import Any, Literal, Self

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.exceptions import WatchError

from worker.backoff import backoff
from worker.constants import DEFAULT_QUEUE, INGEST_JOB
from worker.errors import EnqueueError
from worker.protocol.events import CloudEvent
from worker.protocol.redis import UNAVAILABLE, connect, redacted
from worker.protocol.replicated import enqueue_and_wait
from worker.protocol.serialization import deserialize, serialize
from worker.tracing import carry

EventLike = CloudEvent | Mapping[str, Any] | Any

#: When ``emit`` returns: once the Redis primary acknowledged the job, or once replicas did too.
Durability = Literal["primary", "replicated"]


class NotReplicated(Exception):
    """Fewer replicas than asked for acknowledged a job in time."""

    def __init__(self, confirmed: int, wanted: int, timeout_s: float) -> None:
        super().__init__(f"{confirmed} of {wanted} replica(s) acknowledged the job within {timeout_s:g} s")


#: Failures worth another try: Redis unreachable, the connection lost under a WATCH, replicas late.
_RETRYABLE: tuple[type[Exception], ...] = (*UNAVAILABLE, WatchError, NotReplicated)


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
        retries: int = 5,
        retry_delay: float = 0.2,
        retry_max_delay: float = 2.0,
        durability: Durability = "primary",
        replicas: int = 1,
        replica_timeout: float = 1.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        if durability not in ("primary", "replicated"):
            raise ValueError("durability must be 'primary' or 'replicated'")
        if replicas < 1 or replica_timeout <= 0:
            raise ValueError("replicas must be at least 1 and replica_timeout more than 0")
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.batch_size = batch_size
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_max_delay = retry_max_delay
        self.durability = durability
        self.replicas = replicas
        self.replica_timeout = replica_timeout
        self._redis = redis
        self._owns_redis = redis is None

    async def __aenter__(self) -> Self:
        if self._redis is None:
            try:
                self._redis = await connect(self.redis_url)
            except _RETRYABLE as exc:
                raise EnqueueError(redacted(self.redis_url), None, 1, exc, []) from exc
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

    @staticmethod
    def _is_batch(raw: bytes, events: list[Any]) -> bool:
        """Whether ``raw``, a job or a job's result (which repeats the arguments), carries this batch."""
        try:
            stored = deserialize(raw)
        except ValueError:
            return False
        if not isinstance(stored, dict) or stored.get("f") != INGEST_JOB:
            return False
        return bool(stored.get("a") == deserialize(serialize([events])))

    async def _holds(self, job_id: str, events: list[Any]) -> bool | None:
        """Whether Redis holds ``job_id`` as this batch: True, False (another job), None (no such job)."""
        for key in (job_key_prefix + job_id, result_key_prefix + job_id):
            raw = await self.redis.get(key)
            if raw is not None:
                return self._is_batch(raw, events)
        return None

    async def _enqueue_replicated(self, events: list[Any], job_id: str) -> bool:
        """One try that returns only once ``replicas`` replicas hold the job (else NotReplicated)."""
        now = timestamp_ms()
        job = serialize_job(INGEST_JOB, (events,), {}, None, now, serializer=self.redis.job_serializer)
        done = await enqueue_and_wait(
            self.redis,
            job,
            job_id=job_id,
            queue_name=self.queue_name,
            score=now,
            expires_ms=self.redis.expires_extra_ms,
            replicas=self.replicas,
            timeout_ms=max(1, round(self.replica_timeout * 1000)),
        )
        if not done.written and done.kept is not None and not self._is_batch(done.kept, events):
            raise ValueError(f"a job with id {job_id!r} is already queued, running or kept")
        if done.replicas < self.replicas:
            raise NotReplicated(done.replicas, self.replicas, self.replica_timeout)
        return True

    async def _enqueue_once(self, events: list[Any], job_id: str) -> bool:
        """One try; True when Redis holds the job, False when it holds nothing under that id."""
        if self.durability == "replicated":
            return await self._enqueue_replicated(events, job_id)
        job = await self.redis.enqueue_job(INGEST_JOB, events, _queue_name=self.queue_name, _job_id=job_id)
        if job is not None:
            return True
        # arq says "exists" both for a taken id and for a transaction cut by a lost connection.
        holds = await self._holds(job_id, events)
        if holds is False:
            raise ValueError(f"a job with id {job_id!r} is already queued, running or kept")
        return holds is True

    async def emit_batch(
        self, events: list[Any], *, job_id: str | None = None, _enqueued: list[str] | None = None
    ) -> str:
        """Enqueue one ingest job carrying ``events`` as given; return its job id once Redis has it
        (with ``durability="replicated"``: once its replicas have it too).

        Enqueueing the same batch under the same ``job_id`` again returns the id and queues nothing
        new; another batch under a taken id is a ValueError. Raises :class:`EnqueueError` when
        Redis could not be reached on any try.
        """
        job_id = job_id or uuid.uuid4().hex
        with carry.sending(self.queue_name, job_id, events) as stamped:
            return await self._enqueue_tries(stamped, job_id, _enqueued)

    async def _enqueue_tries(self, events: list[Any], job_id: str, enqueued: list[str] | None) -> str:
        """Every try of one enqueue, with back-off between them (see :meth:`emit_batch`)."""
        tries = self.retries + 1
        for attempt in range(1, tries + 1):
            try:
                if await self._enqueue_once(events, job_id):
                    return job_id
                failure: BaseException = ConnectionError("the enqueue transaction was cut off")
            except _RETRYABLE as exc:
                failure = exc
            if attempt == tries:
                raise EnqueueError(
                    redacted(self.redis_url), job_id, tries, failure, enqueued or []
                ) from failure
            await asyncio.sleep(backoff(attempt, self.retry_delay, self.retry_max_delay))
        raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover

    async def emit(self, events: Iterable[EventLike]) -> list[str]:
        """Enqueue ``events`` in jobs of ``batch_size``; return the job ids.

        On :class:`EnqueueError`, ``exc.enqueued`` lists the jobs of this call Redis confirmed.
        """
        enqueued: list[str] = []
        for chunk in batches(events, self.batch_size):
            enqueued.append(await self.emit_batch(chunk, _enqueued=enqueued))
        return enqueued
