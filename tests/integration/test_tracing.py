"""Spans of real jobs on the real servers, read back from an in-memory exporter.

Each test installs eventworker's tracing on a tracer provider of its own (sampling everything, the
worker's sampler around it), runs real jobs through a real arq worker in this process, and reads the
finished spans: the tree (who is whose parent) and the links. Between them the tests cover an ingest
job (a root span linked to each event's trace, its COPY and SQL under it), a handler run (a child of
its event's own trace), a cron job (a root of its own), failed tries (the retry logic's class of the
failure), ``eventworker serve`` (the request's ``traceparent`` as the HTTP span's parent) and hostile
``traceparent`` values (ignored: never a rejection, never a failed job).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import pytest
from arq import Retry
from arq.cron import cron
from httpserve import InThreadServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from support import job_ctx, run_worker, unique_source

import worker.main
from jobs.handlers import run_handlers, sweep_handlers
from jobs.rollup import update_rollups
from worker.constants import UPDATE_ROLLUPS_JOB
from worker.db.models import Event
from worker.domain import handlers
from worker.domain.handlers import HandlerRegistry, StoredEvent
from worker.errors import JobFailed
from worker.protocol.producer import EventProducer
from worker.runtime.jobrunner import job
from worker.tracing import hooks
from worker.tracing.otel import DropOrphanClients, OtelTracing

pytestmark = pytest.mark.integration

ORDER = "com.example.order.created"
#: A valid traceparent of a trace no test span belongs to (another producer's).
OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = f"00-{OTHER_TRACE}-00f067aa0ba902b7-01"
#: traceparent values an event may carry that name no trace: each is kept as sent, and followed nowhere.
HOSTILE: list[Any] = [
    "",
    "junk",
    OTHER.upper(),
    f"00-{'0' * 32}-00f067aa0ba902b7-01",
    f"ff-{OTHER_TRACE}-00f067aa0ba902b7-01",
    OTHER + "-and-more",
    "00-" + "a" * 4000,
    OTHER + "\r\nX-Injected: 1",
    "\u202e" + OTHER,
    7,
    True,
    1.5,
]


class Traced:
    """This test's tracing: its provider (for an application's spans) and what was exported."""

    def __init__(self, root: Sampler = ALWAYS_ON) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=DropOrphanClients(ParentBased(root)))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = OtelTracing(self.provider, owns_provider=False)

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [s for s in self.spans if s.parent is not None and s.parent.span_id == parent.context.span_id]

    def trace(self, trace_id: int) -> list[ReadableSpan]:
        return [s for s in self.spans if s.context.trace_id == trace_id]


@pytest.fixture
def traced(request: pytest.FixtureRequest) -> Iterator[Traced]:
    """eventworker's tracing on a provider of this test's own; removed afterwards (Redis unwrapped).

    Every trace started here is sampled, unless the test parametrizes the root sampler (``indirect``).
    """
    state = Traced(getattr(request, "param", ALWAYS_ON))
    state.tracing.instrument_redis()
    hooks.install(state.tracing)
    yield state
    hooks.install(None)
    state.tracing.shutdown()
    state.provider.shutdown()


@pytest.fixture(autouse=True)
def registry(monkeypatch) -> HandlerRegistry:
    """A handler registry of this test's own; the worker runs the handler jobs."""
    fresh = HandlerRegistry()
    monkeypatch.setattr(handlers, "registry", fresh)
    monkeypatch.delenv(handlers.MODULES_VARIABLE, raising=False)
    jobs = dict.fromkeys((*worker.main.FUNCTIONS, run_handlers, sweep_handlers))
    monkeypatch.setattr(worker.main, "FUNCTIONS", tuple(jobs))
    return fresh


def order(n: int, source: str, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"order-{n}",
        "source": source,
        "type": ORDER,
        "data": {"n": n},
        **extra,
    }


def is_root(span: ReadableSpan) -> bool:
    return span.parent is None


async def send(traced: Traced, settings: Any, events: list[Any], name: str = "place orders") -> ReadableSpan:
    """Send ``events`` from inside an application's span; that span, once ended."""
    async with EventProducer(settings.redis_url, queue_name=settings.queue_name) as producer:
        with traced.provider.get_tracer("shop").start_as_current_span(name):
            await producer.emit_batch(events)
    return traced.one(name)


async def test_an_ingest_job_is_a_root_span_linked_to_each_events_trace(traced, pg_settings, pg_db):
    """The ingest job (COPY path) is one CONSUMER root span that links to the producer's send span and
    to an event's own trace, with its COPY, SQL and Redis calls under it; hostile traceparents are kept
    as sent and followed nowhere; no client span is left without a parent."""
    source = unique_source()
    events = [order(n, source) for n in range(100)]
    events += [order(100, source, traceparent=OTHER, tracestate="congo=t61rcWkgMzE")]
    events += [order(101 + n, source, traceparent=value) for n, value in enumerate(HOSTILE)]
    shop = await send(traced, pg_settings, events)
    await run_worker(pg_settings)

    sent = traced.one(f"send {pg_settings.queue_name}")
    assert sent.kind is SpanKind.PRODUCER
    assert sent.parent is not None
    assert sent.parent.span_id == shop.context.span_id
    assert sent.attributes["messaging.batch.message_count"] == len(events)

    ingest = traced.one(f"ingest_events {pg_settings.queue_name}")
    assert is_root(ingest)
    assert ingest.kind is SpanKind.CONSUMER
    attributes = dict(ingest.attributes or {})
    assert attributes["messaging.system"] == "arq"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == pg_settings.queue_name
    assert attributes["messaging.message.id"]
    assert attributes["messaging.batch.message_count"] == len(events)
    assert attributes["eventworker.job.try"] == 1
    assert attributes["eventworker.job.queue_wait_ms"] >= 0
    assert attributes["eventworker.result.accepted"] == len(events)
    assert attributes["eventworker.ingest.traces"] == 2
    assert attributes["eventworker.ingest.traces_not_linked"] == 0
    links = {(link.context.trace_id, link.context.span_id): link.attributes for link in ingest.links}
    assert links == {
        (sent.context.trace_id, sent.context.span_id): {"eventworker.events": 100},
        (int(OTHER_TRACE, 16), 0x00F067AA0BA902B7): {"eventworker.events": 1},
    }
    assert ingest.status.status_code is StatusCode.UNSET

    under = traced.children(ingest)
    copy = [s for s in under if s.name == "COPY ew_events_stage"]
    assert len(copy) == 1
    assert copy[0].kind is SpanKind.CLIENT
    assert copy[0].attributes["db.system"] == "postgresql"
    assert any(str(s.attributes.get("db.statement", "")).startswith("INSERT INTO events") for s in under)
    # The enqueue's Redis commands are under the send span (arguments as "?").
    enqueue = traced.children(sent)
    assert enqueue
    assert all(s.attributes["db.system"] == "redis" for s in enqueue)
    assert all(not is_root(s) for s in traced.spans if s.kind is SpanKind.CLIENT)

    async with pg_db.transaction() as session:
        stored = dict((await session.execute(select(Event.event_id, Event.extensions))).all())
    assert stored["order-0"] == {"traceparent": _header(sent)}
    assert stored["order-100"] == {"traceparent": OTHER, "tracestate": "congo=t61rcWkgMzE"}
    assert [stored[f"order-{101 + n}"]["traceparent"] for n in range(len(HOSTILE))] == HOSTILE


def _header(span: ReadableSpan) -> str:
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


async def test_a_handler_run_is_a_child_of_its_events_own_trace(traced, registry, pg_settings, pg_db):
    """A handler run's span is under the send span of the event's producer (one trace from the
    application's span to the handler's SQL), linked to the job try that ran it; a failed run is an
    error of the handler's exception class; an event with a hostile traceparent has its run under the job."""

    @registry.handler(ORDER, name="total")
    async def total(event: StoredEvent, session: AsyncSession) -> None:
        await session.scalar(
            select(func.count()).select_from(Event).where(Event.source == event.event.source)
        )
        if event.event.id == "order-2":
            raise ValueError("no amount")

    source = unique_source()
    shop = await send(traced, pg_settings, [order(1, source), order(2, source)])
    hostile = await send(traced, pg_settings, [order(3, source, traceparent="00-junk")], "hostile")
    await run_worker(pg_settings)

    sent = [
        s
        for s in traced.named(f"send {pg_settings.queue_name}")
        if s.context.trace_id == shop.context.trace_id
    ]
    runs: dict[str, list[ReadableSpan]] = {}
    for span in traced.named("handler total"):
        runs.setdefault(str(span.attributes["cloudevents.event_id"]), []).append(span)
    assert set(runs) == {"order-1", "order-2", "order-3"}
    for run in runs["order-1"] + runs["order-2"]:  # the failing one's retries too
        assert run.context.trace_id == shop.context.trace_id
        assert run.parent is not None
        assert run.parent.span_id == sent[0].context.span_id
        assert run.parent.is_remote
        (link,) = run.links
        job_span = next(s for s in traced.spans if s.context.span_id == link.context.span_id)
        assert job_span.name == f"run_handlers {pg_settings.queue_name}"
        statements = [str(s.attributes.get("db.statement", "")) for s in traced.children(run)]
        assert any(statement.startswith("SELECT count(*)") for statement in statements)
        assert any(statement.startswith("UPDATE handler_runs") for statement in statements)
    [done] = runs["order-1"]
    assert done.attributes["eventworker.handler.outcome"] == "done"
    assert done.status.status_code is StatusCode.UNSET
    failed = runs["order-2"]
    assert [s.attributes["eventworker.handler.try"] for s in failed] == list(
        range(1, pg_settings.max_tries + 1)
    )
    assert [s.attributes["eventworker.handler.outcome"] for s in failed] == ["retrying"] * (
        pg_settings.max_tries - 1
    ) + ["failed"]
    for span in failed:
        assert span.attributes["error.type"] == "ValueError"
        assert span.status.status_code is StatusCode.ERROR
        assert [e.attributes["exception.message"] for e in span.events] == ["no amount"]

    # No trace of its own to join: the run sits under the job try, and is done like any other.
    [lone] = runs["order-3"]
    assert lone.context.trace_id != hostile.context.trace_id
    assert lone.parent is not None
    parent = next(s for s in traced.spans if s.context.span_id == lone.parent.span_id)
    assert parent.name == f"run_handlers {pg_settings.queue_name}"
    assert lone.attributes["eventworker.handler.outcome"] == "done"
    assert lone.links == ()

    # One trace from the application's span to the handler's SQL.
    names = {s.name for s in traced.trace(shop.context.trace_id)}
    assert {"place orders", f"send {pg_settings.queue_name}", "handler total"} <= names


async def test_a_cron_job_is_a_root_span_of_its_own(traced, pg_settings):
    """A cron tick run by arq starts a trace: a CONSUMER root marked as cron, its SQL under it."""
    month = (datetime.now(UTC).month + 4) % 12 + 1  # never at its own time during the test
    rollups = cron(cast(Any, update_rollups), name=UPDATE_ROLLUPS_JOB, month=month, run_at_startup=True)
    await run_worker(pg_settings, cron_jobs=[rollups])
    tick = traced.one(f"update_rollups {pg_settings.queue_name}")
    assert is_root(tick)
    assert tick.kind is SpanKind.CONSUMER
    assert tick.attributes["eventworker.job.cron"] is True
    assert tick.attributes["messaging.message.id"].startswith("update_rollups:")
    assert any(s.kind is SpanKind.CLIENT for s in traced.children(tick))


async def test_a_failed_try_carries_the_retry_logics_class_of_the_failure(traced, pg_settings, pg_db):
    """A try retried after a timeout and one given up on as permanent: status ERROR, ``error.type`` the
    retry logic's class, what was decided, and the exception recorded."""

    @job
    async def export_orders(ctx: Any) -> None:
        raise TimeoutError("the export took too long")

    with pytest.raises(Retry):
        await export_orders(job_ctx(pg_settings, pg_db, job_id="job-timeout"))
    with pytest.raises(JobFailed):
        await run_handlers(job_ctx(pg_settings, pg_db, job_id="job-permanent"), limit=0)

    retried = traced.one(f"export_orders {pg_settings.queue_name}")
    assert retried.status.status_code is StatusCode.ERROR
    assert retried.attributes["error.type"] == "timeout"
    assert retried.attributes["eventworker.job.outcome"] == "retry"
    assert retried.attributes["eventworker.job.retry_in_s"] > 0
    assert retried.events[0].attributes["exception.type"] == "builtins.TimeoutError"
    given_up = traced.one(f"run_handlers {pg_settings.queue_name}")
    assert given_up.attributes["error.type"] == "permanent"
    assert given_up.attributes["eventworker.job.outcome"] == "failed"
    assert given_up.status.status_code is StatusCode.ERROR


async def test_many_traces_in_one_batch_are_linked_up_to_the_limit_sampled_ones_first(traced, pg_settings):
    """500 events from 500 traces: the span keeps 128 links (the SDK's default limit), the sampled
    traces first, and says how many it left out."""
    source = unique_source()
    events = [
        order(n, source, traceparent=f"00-{n + 1:032x}-{n + 1:016x}-{'01' if n % 5 == 0 else '00'}")
        for n in range(500)
    ]
    async with EventProducer(pg_settings.redis_url, queue_name=pg_settings.queue_name) as producer:
        await producer.emit_batch(events)
    await run_worker(pg_settings)
    ingest = traced.one(f"ingest_events {pg_settings.queue_name}")
    assert len(ingest.links) == 128
    assert sum(link.context.trace_flags.sampled for link in ingest.links) == 100
    assert ingest.attributes["eventworker.ingest.traces"] == 500
    assert ingest.attributes["eventworker.ingest.traces_not_linked"] == 372
    assert ingest.attributes["eventworker.result.accepted"] == 500


@pytest.mark.parametrize("request_traceparent", ["valid", "hostile", "none"])
async def test_serve_makes_the_requests_traceparent_the_http_spans_parent(
    traced, pg_settings, pg_db, request_traceparent
):
    """POST /events: the HTTP span's parent is the request's ``traceparent`` (a hostile one starts a
    trace, and the request is taken all the same); an event's own ``ce-traceparent`` is kept, and one
    without gets the send span's context under the HTTP span."""
    source = unique_source()
    headers = {"content-type": "application/json", "ce-specversion": "1.0", "ce-id": "binary-1"}
    headers |= {"ce-source": source, "ce-type": ORDER, "ce-traceparent": OTHER}
    request_trace = f"{uuid.uuid4().int & (2**128 - 1):032x}"
    if request_traceparent == "valid":
        headers["traceparent"] = f"00-{request_trace}-{'ab' * 8}-01"
    elif request_traceparent == "hostile":
        headers["traceparent"] = "00-" + "z" * 2000
    structured = {"content-type": "application/cloudevents+json"}
    server = await asyncio.to_thread(InThreadServer, pg_settings)  # made with tracing on: spanned
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.post("/events", content=b'{"n": 1}', headers=headers)).status_code == 202
            body = order(7, source)
            assert (await client.post("/events", json=body, headers=structured)).status_code == 202
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await asyncio.to_thread(server.stop)
    await run_worker(pg_settings)

    http = traced.named("POST /events")
    assert len(http) == 2
    first = http[0]
    assert first.kind is SpanKind.SERVER
    assert first.attributes["http.route"] == "/events"
    assert first.attributes["http.response.status_code"] == 202
    if request_traceparent == "valid":
        assert first.parent is not None
        assert first.parent.is_remote
        assert f"{first.context.trace_id:032x}" == request_trace
    else:
        assert is_root(first)
    assert not any(s.name.startswith("GET /healthz") for s in traced.spans)  # probes are not spanned
    sends = traced.named(f"send {pg_settings.queue_name}")
    assert [s.parent.span_id for s in sends if s.parent] == [s.context.span_id for s in http]
    async with pg_db.transaction() as session:
        stored = dict((await session.execute(select(Event.event_id, Event.extensions))).all())
    assert stored["binary-1"] == {"traceparent": OTHER}
    assert stored["order-7"] == {"traceparent": _header(sends[1])}


async def test_tracing_off_changes_nothing_an_event_carries(pg_settings, pg_db):
    """Without tracing (no hooks installed), events are stored as sent: no traceparent is added."""
    assert hooks.ACTIVE is None
    source = unique_source()
    async with EventProducer(pg_settings.redis_url, queue_name=pg_settings.queue_name) as producer:
        await producer.emit_batch([order(1, source)])
    await run_worker(pg_settings)
    async with pg_db.transaction() as session:
        assert await session.scalar(select(Event.extensions)) is None
        assert await session.scalar(text("SELECT count(*) FROM events")) == 1


#: ``db.system`` of the SQL instrumentation, by driver.
SYSTEMS = {"asyncpg": "postgresql", "psycopg": "postgresql", "aiomysql": "mysql", "asyncmy": "mysql"}


async def test_every_dialects_statements_are_spans_under_the_job_and_the_handler_run(
    traced, registry, backend, settings
):
    """On every database the ingest job's statements are under its span and a handler's under its run."""

    @registry.handler(ORDER, name="count")
    async def count(event: StoredEvent, session: AsyncSession) -> None:
        await session.scalar(select(func.count()).select_from(Event))

    shop = await send(traced, settings, [order(1, unique_source())])
    await run_worker(settings)
    system = SYSTEMS.get(backend, "sqlite")
    ingest = traced.one(f"ingest_events {settings.queue_name}")
    inserts = [s for s in traced.children(ingest) if s.name.startswith("INSERT")]
    assert inserts
    assert {s.attributes["db.system"] for s in inserts} == {system}
    run = traced.one("handler count")
    assert run.context.trace_id == shop.context.trace_id
    statements = [str(s.attributes.get("db.statement", "")) for s in traced.children(run)]
    assert any(statement.startswith("SELECT count(*)") for statement in statements)


@pytest.mark.parametrize("traced", [ALWAYS_OFF], indirect=True, ids=["roots never sampled"])
async def test_an_unsampled_job_costs_its_children_nothing_and_a_sampled_events_runs_are_kept(
    traced, registry, pg_settings
):
    """Roots never sampled (as with a 1 % ratio, 99 times in 100): no job span and nothing under one is
    recorded, while a handler run on an event whose producer sampled its trace is, with its SQL."""

    @registry.handler(ORDER, name="count")
    async def count(event: StoredEvent, session: AsyncSession) -> None:
        await session.scalar(select(func.count()).select_from(Event))

    sampled = f"00-{OTHER_TRACE}-00f067aa0ba902b7-01"
    source = unique_source()
    async with EventProducer(pg_settings.redis_url, queue_name=pg_settings.queue_name) as producer:
        await producer.emit_batch([order(1, source, traceparent=sampled), order(2, source)])
    await run_worker(pg_settings)
    run = traced.one("handler count")
    assert run.context.trace_id == int(OTHER_TRACE, 16)
    assert any(
        str(s.attributes.get("db.statement", "")).startswith("SELECT count(*)") for s in traced.children(run)
    )
    assert {s.context.trace_id for s in traced.spans} == {int(OTHER_TRACE, 16)}
