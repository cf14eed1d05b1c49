"""The tracing hooks eventworker's code calls: no-ops until tracing is started, and free while off.

Every place that can make a span asks for :data:`ACTIVE` first: None (tracing off) costs one
module attribute read, and the code runs as it would without tracing. :func:`start` turns tracing
on when the standard variables ask for it (:func:`wanted`) and the ``otel`` extra is installed; it
is called by the worker's start-up and by ``eventworker serve``, never at import. This module
imports no OpenTelemetry: what a hook does is described by :class:`Tracing`, and done by
:class:`worker.tracing.otel.OtelTracing`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from worker.logging import get_logger

log = get_logger("eventworker.tracing")

#: Values of ``OTEL_TRACES_EXPORTER`` that export nothing.
_NO_EXPORTER = frozenset({"", "none"})


class JobSpan(Protocol):
    """The span of one job try, as the job runner reports how the try ended."""

    def succeeded(self, result: Any) -> None:
        """The try returned ``result`` (a job's counts become attributes)."""

    def failed(
        self, exc: BaseException | None, error_type: str, outcome: str, retry_in: float | None
    ) -> None:
        """The try failed: ``error_type`` is the retry logic's class of the failure, ``outcome`` what was
        decided (``retry`` after ``retry_in`` seconds, or ``failed``)."""


class HandlerSpan(Protocol):
    """The span of one handler run."""

    def ended(self, outcome: str, exc: BaseException | None) -> None:
        """The run ended ``done``, ``retrying`` or ``failed`` (with the handler's exception)."""


class HttpSpan(Protocol):
    """The span of one HTTP request."""

    def ended(self, status: int, route: str | None) -> None:
        """The request was answered with ``status``, by the route ``route`` (None: no route matched)."""


class Tracing(Protocol):
    """What eventworker does with tracing on (:class:`worker.tracing.otel.OtelTracing`)."""

    def job_try(self, ctx: Mapping[str, Any], job: str) -> AbstractContextManager[JobSpan]:
        """The span of a job try (a root span: cron jobs and jobs alike start a trace of their own)."""

    def link_events(self, extensions: Sequence[Mapping[str, Any] | None], message_count: int) -> None:
        """Link the current job try's span to the trace of each event (their extension attributes)."""

    def handler_run(
        self, handler: str, run_id: int, try_number: int, event: Any
    ) -> AbstractContextManager[HandlerSpan]:
        """The span of a handler run on ``event`` (an ``events`` row): a child of the event's own trace."""

    def database_call(
        self, system: str, operation: str, table: str, statement: str
    ) -> AbstractContextManager[None]:
        """A span around a statement sent to the driver directly (the COPY paths)."""

    def http_request(
        self, method: str, path: str, scheme: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> AbstractContextManager[HttpSpan]:
        """The span of an HTTP request, a child of the request's ``traceparent`` header if it is valid."""

    def tracer(self) -> Any:
        """eventworker's OpenTelemetry tracer (the producer's ``send`` span in ``eventworker serve``)."""

    def instrument_engine(self, sync_engine: Any) -> None:
        """Span every statement of this SQLAlchemy engine (its ``sync_engine``)."""

    def quiet_outside_spans(self) -> None:
        """Instrumentation off in the calling task and the tasks it starts, but inside eventworker's spans."""

    def log_processors(self) -> list[Callable[..., Any]]:
        """structlog processors that add ``trace_id`` and ``span_id`` to lines written inside a span."""

    def shutdown(self) -> None:
        """Export what is left and stop (at the process's end)."""


#: The tracing in force, None while off. Read by every hook; set by :func:`install`.
ACTIVE: Tracing | None = None
#: Set (by ``bench/tracing.py``, before the jobs are imported) to build the job runner exactly as it was
#: without tracing: the benchmark's baseline for the cost of the hooks while tracing is off.
BYPASS = False
#: What :func:`start` started, for :func:`stop`.
_started: Tracing | None = None


def install(tracing: Tracing | None) -> None:
    """Make ``tracing`` the one every hook uses (None: off)."""
    global ACTIVE
    ACTIVE = tracing


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces.

    On when ``OTEL_TRACES_EXPORTER`` names an exporter (not ``none``), or, without it, an OTLP endpoint
    is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). Off with
    ``OTEL_SDK_DISABLED=true``, as for every OpenTelemetry SDK.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None and exporters.strip():
        return any(name.strip().lower() not in _NO_EXPORTER for name in exporters.split(","))
    return any(
        environ.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def start(
    service: str,
    secrets: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    *,
    set_global: bool = True,
) -> Tracing | None:
    """Start tracing for this process if the variables ask for it; the tracing started, or None.

    ``service``: the ``service.name`` when ``OTEL_SERVICE_NAME`` (or ``OTEL_RESOURCE_ATTRIBUTES``)
    gives none; ``secrets``: redacted from recorded exceptions; ``set_global``: make its tracer provider
    OpenTelemetry's global one, for the spans of the user's own handlers (``eventworker serve`` does not:
    FastAPI would then add request spans of its own beside eventworker's). Without the ``otel`` extra, one
    warning says what to install and the process runs untraced. A variable the SDK would misread
    raises :class:`~worker.errors.ConfigError`.
    """
    global _started
    environ = os.environ if environ is None else environ
    if not wanted(environ):
        return None
    try:
        from worker.tracing import setup  # the otel extra: imported only when traces are asked for
    except ImportError as exc:
        log.warning(
            "tracing.unavailable",
            missing=exc.name,
            fix="pip install 'eventworker[otel]'",
            effect="no traces: OTEL_* variables ask for them, but OpenTelemetry's SDK is not installed",
        )
        return None
    tracing = setup.configure(service, secrets, environ, set_global=set_global)
    install(tracing)
    _started = tracing
    return tracing


def stop() -> None:
    """Stop what :func:`start` started (spans still queued are exported first)."""
    global _started
    tracing, _started = _started, None
    if tracing is None:
        return
    if ACTIVE is tracing:
        install(None)
    tracing.shutdown()


def log_processors() -> list[Callable[..., Any]]:
    """The structlog processors tracing adds to every log line (none while off)."""
    return [] if ACTIVE is None else ACTIVE.log_processors()


class _NoHandlerSpan:
    """A handler run's span while tracing is off."""

    def ended(self, outcome: str, exc: BaseException | None) -> None:
        """Record nothing."""


_NO_HANDLER_SPAN = _NoHandlerSpan()


@contextmanager
def _untraced_handler_run() -> Iterator[HandlerSpan]:
    yield _NO_HANDLER_SPAN


def handler_run(
    handler: str, run_id: int, try_number: int, event: Any
) -> AbstractContextManager[HandlerSpan]:
    """The span of a handler run (see :meth:`Tracing.handler_run`), or one that records nothing."""
    tracing = ACTIVE
    if tracing is None:
        return _untraced_handler_run()
    return tracing.handler_run(handler, run_id, try_number, event)
