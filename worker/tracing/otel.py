"""The spans behind the hooks (:class:`OtelTracing`), made with OpenTelemetry's API and SDK.

What one trace holds, and why it is shaped so (docs/tracing.md shows one):

- **A job try** is a ``CONSUMER`` span named ``<job> <queue>`` after OpenTelemetry's messaging
  conventions (``messaging.operation.type`` ``process``, ``messaging.destination.name`` the queue,
  ``messaging.message.id`` the job id), with the try number, the queue wait (enqueue to start) and,
  once it ended, the job's counts. It is always a **root**: a batch has as many parents as events,
  so an ingest job's span **links** to each event's trace instead (:meth:`OtelTracing.link_events`),
  and a cron job's tick starts a trace of its own. A failed try has status ERROR, ``error.type`` the
  retry logic's class of the failure (``database_unavailable``, ``timeout``, ``permanent``, ...)
  and ``eventworker.job.outcome`` what was decided.
- **A handler run** is a child of its event's own trace (the event's ``traceparent``), linked to
  the job try that ran it; its handler's SQL is a child of it. An event without a valid
  ``traceparent`` has its runs under the job try.
- **SQL** comes from ``opentelemetry-instrumentation-sqlalchemy`` on each engine's ``sync_engine``
  (every dialect); the COPY statements eventworker sends to asyncpg directly get a span each
  (:meth:`OtelTracing.database_call`). **Redis** commands come from
  ``opentelemetry-instrumentation-redis``.
- **No span without a job or a request**: arq polls its queue about twenty times a second, and the
  worker's heartbeat writes every few seconds; neither is a trace. In a worker the instrumentation
  is off outside eventworker's spans (:meth:`OtelTracing.quiet_outside_spans`: its wrappers return
  at their first check), and on inside a span only if it is recorded (a span the sampler dropped
  costs its children nothing); elsewhere the sampler drops a client span without a parent
  (:class:`DropOrphanClients`).

Exception messages recorded on spans are redacted as log lines are (URL passwords, the configured
secrets).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, Context
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes
from structlog.typing import EventDict, WrappedLogger

from worker import __version__
from worker.constants import CRON_JOBS
from worker.logging import redact_text
from worker.tracing.traceparent import choose_links, distinct_parents, parse_traceparent, parse_tracestate

#: The instrumentation scope of eventworker's own spans.
SCOPE = "eventworker"
#: ``messaging.system`` of a job try: arq, on Redis.
MESSAGING_SYSTEM = "arq"
#: Result keys of a job that become span attributes (``eventworker.result.<key>``): its counts.
_RESULT_TYPES = (int, float, bool, str)


class DropOrphanClients(Sampler):
    """Drop a client span (a Redis command, a SQL statement) that has no parent; ask ``root`` otherwise.

    arq's queue polls, its job claims and the worker's heartbeat run outside any job: spanning them
    would make a trace per poll. Inside a job, a request or a handler run, every call is kept (or
    not) with its parent.
    """

    def __init__(self, root: Sampler) -> None:
        self.root = root

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        """DROP for a parentless client span, else the wrapped sampler's decision."""
        if kind is SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self.root.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        """How this sampler decides, for the SDK's own messages."""
        return f"DropOrphanClients{{{self.root.get_description()}}}"


def remote_context(traceparent: object, tracestate: object = None) -> SpanContext | None:
    """The span context a ``traceparent`` (and ``tracestate``) name, or None if it is not a valid one."""
    parent = parse_traceparent(traceparent)
    if parent is None:
        return None
    members = parse_tracestate(tracestate) if tracestate is not None else None
    return SpanContext(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=TraceFlags(parent.flags),
        trace_state=TraceState(members) if members else None,
    )


def current(span: Span) -> Context:
    """A context with ``span`` current, where the SQL and Redis instrumentation is on only if it records."""
    recorded = trace.set_span_in_context(span)
    return otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, not span.is_recording(), recorded)


def add_trace_ids(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: ``trace_id`` and ``span_id`` of the span the line is written in, if any."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


class _Recorder:
    """What every span handle shares: recording a failure, redacted."""

    def __init__(self, span: Span, secrets: tuple[str, ...]) -> None:
        self.span = span
        self.secrets = secrets

    def record_failure(self, exc: BaseException | None, error_type: str) -> None:
        self.span.set_attribute("error.type", error_type)
        if exc is None:
            self.span.set_status(Status(StatusCode.ERROR, error_type))
            return
        message = redact_text(f"{type(exc).__name__}: {exc}", self.secrets)[:2000]
        self.span.set_status(Status(StatusCode.ERROR, message))
        # As Span.record_exception would, with the message and trace redacted as log lines are.
        self.span.add_event(
            "exception",
            {
                "exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "exception.message": redact_text(str(exc), self.secrets)[:2000],
                "exception.stacktrace": redact_text("".join(traceback.format_exception(exc)), self.secrets),
            },
        )


class OtelJobSpan(_Recorder):
    """A job try's span (:class:`worker.tracing.hooks.JobSpan`)."""

    reported = False

    def succeeded(self, result: Any) -> None:
        """Keep the job's counts; the status stays unset (OK)."""
        self.reported = True
        self.span.set_attribute("eventworker.job.outcome", "done")
        if isinstance(result, Mapping):
            for key, value in result.items():
                if isinstance(value, _RESULT_TYPES):
                    self.span.set_attribute(f"eventworker.result.{key}", value)

    def failed(
        self, exc: BaseException | None, error_type: str, outcome: str, retry_in: float | None
    ) -> None:
        """ERROR, with the retry logic's class of the failure and what it decided."""
        self.reported = True
        self.span.set_attribute("eventworker.job.outcome", outcome)
        if retry_in is not None:
            self.span.set_attribute("eventworker.job.retry_in_s", round(retry_in, 3))
        self.record_failure(exc, error_type)


class OtelHandlerSpan(_Recorder):
    """A handler run's span (:class:`worker.tracing.hooks.HandlerSpan`)."""

    def ended(self, outcome: str, exc: BaseException | None) -> None:
        """``done``, ``retrying`` or ``failed``; a failure's ``error.type``: the handler's exception class."""
        self.span.set_attribute("eventworker.handler.outcome", outcome)
        if exc is not None:
            self.record_failure(exc, type(exc).__qualname__)


class OtelHttpSpan:
    """An HTTP request's span: its route and status, once answered."""

    def __init__(self, span: Span, method: str) -> None:
        self.span = span
        self.method = method

    def ended(self, status: int, route: str | None) -> None:
        """Name the span by its route (``POST /events``); a 5xx status is an error."""
        if route is not None:
            self.span.update_name(f"{self.method} {route}")
            self.span.set_attribute("http.route", route)
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_attribute("error.type", str(status))
            self.span.set_status(Status(StatusCode.ERROR))


class OtelTracing:
    """eventworker's spans on a tracer provider (:class:`worker.tracing.hooks.Tracing`).

    ``owns_provider``: :meth:`shutdown` shuts the provider down too (tests hand in one of their own).
    ``secrets``: redacted from every recorded exception. ``max_links``: links a span may keep (the
    SDK's ``OTEL_SPAN_LINK_COUNT_LIMIT``, 128 by default).
    """

    def __init__(
        self,
        provider: TracerProvider,
        *,
        secrets: Sequence[str] = (),
        owns_provider: bool = True,
        max_links: int | None = None,
    ) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(SCOPE, __version__)
        self.secrets = tuple(secrets)
        self.owns_provider = owns_provider
        limit = SpanLimits().max_links if max_links is None else max_links
        self.max_links = 128 if limit is None else limit
        self._sql_tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__)
        # The instrumentation also counts pooled connections: into the global meter provider, which
        # exports nothing unless the application set one (eventworker's pool metrics are Prometheus').
        self._connections = metrics.get_meter(SCOPE).create_up_down_counter(
            "db.client.connections.usage", unit="connections"
        )
        self._redis: RedisInstrumentor | None = None

    # -- set-up ------------------------------------------------------------------------------------

    def instrument_redis(self) -> None:
        """Span Redis commands (every client in the process: redis-py's classes are wrapped)."""
        instrumentor = RedisInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=self.provider)
            self._redis = instrumentor

    def instrument_engine(self, sync_engine: Any) -> None:
        """Span every statement this engine sends (listeners on ``sync_engine``, any dialect)."""
        EngineTracer(self._sql_tracer, sync_engine, self._connections)  # type: ignore[no-untyped-call]

    def tracer(self) -> trace.Tracer:
        """eventworker's tracer."""
        return self._tracer

    def quiet_outside_spans(self) -> None:
        """Instrumentation off in the calling task and in every task it starts, but inside
        eventworker's spans (called in arq's main task at start-up: the polls, the job claims, the
        results and the heartbeat cost one check each, not a span the sampler then drops)."""
        otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))

    def log_processors(self) -> list[Callable[..., Any]]:
        """:func:`add_trace_ids`."""
        return [add_trace_ids]

    def shutdown(self) -> None:
        """Remove the instrumentation; export what is queued and stop, if the provider is ours."""
        if self._redis is not None:
            self._redis.uninstrument()
            self._redis = None
        EngineTracer.remove_all_event_listeners()  # type: ignore[no-untyped-call]
        if self.owns_provider:
            self.provider.shutdown()

    # -- spans -------------------------------------------------------------------------------------

    def _job_attributes(self, ctx: Mapping[str, Any], job: str) -> dict[str, Any]:
        settings = ctx.get("settings")
        queue = getattr(settings, "queue_name", None) or "arq:queue"
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": job,
            "messaging.destination.name": queue,
            "messaging.message.id": ctx.get("job_id") or "",
            "eventworker.job.name": job,
            "eventworker.job.try": int(ctx.get("job_try") or 1),
        }
        if ctx.get("worker_id"):
            attributes["messaging.client.id"] = ctx["worker_id"]
        if job in CRON_JOBS:
            attributes["eventworker.job.cron"] = True
        now = time.time()
        enqueued = ctx.get("enqueue_time")
        if enqueued is not None:
            attributes["eventworker.job.queue_wait_ms"] = round((now - enqueued.timestamp()) * 1000, 3)
        score = ctx.get("score")
        if score and enqueued is not None and score / 1000 - enqueued.timestamp() > 0.001:
            # Deferred (a retry's back-off, a job enqueued for later): also the wait since it was due.
            attributes["eventworker.job.due_wait_ms"] = round(now * 1000 - score, 3)
        return attributes

    @contextmanager
    def job_try(self, ctx: Mapping[str, Any], job: str) -> Iterator[OtelJobSpan]:
        """A job try's span, current while the try runs; a root (see the module's docstring)."""
        attributes = self._job_attributes(ctx, job)
        span = self._tracer.start_span(
            f"{job} {attributes['messaging.destination.name']}",
            context=Context(),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        handle = OtelJobSpan(span, self.secrets)
        token = otel_context.attach(current(span))
        try:
            yield handle
        except BaseException as exc:
            if not handle.reported:  # cancelled (a shutdown), or failed outside the runner's handling
                handle.failed(exc, type(exc).__name__, "interrupted", None)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    def link_events(self, extensions: Sequence[Mapping[str, Any] | None], message_count: int) -> None:
        """Link the current job try's span to each event's trace (see :func:`choose_links`).

        ``extensions``: the stored events' extension attributes, where ``traceparent`` travels;
        ``message_count``: the inputs of the batch (stored, duplicate and rejected alike).
        """
        span = trace.get_current_span()
        if not span.is_recording():
            return
        parents = distinct_parents(e.get("traceparent") for e in extensions if e)
        chosen, left_out = choose_links(parents, self.max_links)
        for parent, count in chosen:
            context = SpanContext(
                parent.trace_id, parent.span_id, is_remote=True, trace_flags=TraceFlags(parent.flags)
            )
            span.add_link(context, {"eventworker.events": count})
        span.set_attributes(
            {
                "messaging.batch.message_count": message_count,
                "eventworker.ingest.traces": len(parents),
                "eventworker.ingest.traces_not_linked": left_out,
            }
        )

    @contextmanager
    def handler_run(
        self, handler: str, run_id: int, try_number: int, event: Any
    ) -> Iterator[OtelHandlerSpan]:
        """A handler run's span, a child of the event's trace and linked to the job try (see above)."""
        extensions = getattr(event, "extensions", None) or {}
        parent = remote_context(extensions.get("traceparent"), extensions.get("tracestate"))
        job = trace.get_current_span().get_span_context()
        links: list[Link] = []
        context = None
        if parent is not None:
            context = trace.set_span_in_context(NonRecordingSpan(parent))
            if job.is_valid:
                links.append(Link(job, {"eventworker.link": "job try"}))
        attributes: dict[str, Any] = {
            "eventworker.handler.name": handler,
            "eventworker.handler.run_id": run_id,
            "eventworker.handler.try": try_number,
        }
        if event is not None:
            attributes.update(
                {
                    "cloudevents.event_id": event.event_id,
                    "cloudevents.event_source": event.source,
                    "cloudevents.event_type": event.type,
                    "eventworker.event.seq": event.seq,
                }
            )
        span = self._tracer.start_span(
            f"handler {handler}", context=context, kind=SpanKind.INTERNAL, attributes=attributes, links=links
        )
        token = otel_context.attach(current(span))
        try:
            yield OtelHandlerSpan(span, self.secrets)
        finally:
            otel_context.detach(token)
            span.end()

    @contextmanager
    def database_call(self, system: str, operation: str, table: str, statement: str) -> Iterator[None]:
        """A ``CLIENT`` span around a statement sent to the driver itself, as the SQL instrumentation's."""
        with self._tracer.start_as_current_span(
            f"{operation} {table}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": system,
                "db.operation": operation,
                "db.sql.table": table,
                "db.statement": statement,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as exc:
                _Recorder(span, self.secrets).record_failure(exc, type(exc).__qualname__)
                raise

    @contextmanager
    def http_request(
        self, method: str, path: str, scheme: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> Iterator[OtelHttpSpan]:
        """A ``SERVER`` span for a request, whose parent is the request's W3C ``traceparent`` header.

        A missing or invalid header (however hostile) only means the span starts a trace.
        """
        traceparent = tracestate = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"traceparent":
                traceparent = value.decode("latin-1")
            elif lowered == b"tracestate":
                tracestate = value.decode("latin-1")
        parent = remote_context(traceparent, tracestate)
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else Context()
        span = self._tracer.start_span(
            method,
            context=context,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path, "url.scheme": scheme},
        )
        token = otel_context.attach(current(span))
        try:
            yield OtelHttpSpan(span, method)
        finally:
            otel_context.detach(token)
            span.end()
