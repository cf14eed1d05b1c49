"""The producer's side of a trace: a ``send`` span around an enqueue, and its context in every event.

CloudEvents carry their trace in the Distributed Tracing extension: the ``traceparent`` and
``tracestate`` attributes, W3C Trace Context values. When the application that sends events has a
span active (its own OpenTelemetry set-up, or ``eventworker serve``'s request span),
:func:`sending` opens a ``PRODUCER`` span ``send <queue>`` under it and writes that span's context
into each event that has no ``traceparent`` yet; an event that has one keeps it (and its
``tracestate``), whatever it holds. Without OpenTelemetry installed, or with no span active, the
events go as they are and nothing else happens.

OpenTelemetry's API is imported at the first send, never at import, and only if it is installed:
a producer needs nothing of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from worker.tracing import hooks

#: ``opentelemetry.trace`` once looked for: the module, or False when it is not installed.
_api: ModuleType | bool | None = None


def _trace_api() -> ModuleType | None:
    global _api
    if _api is None:
        try:
            from opentelemetry import trace
        except ImportError:
            _api = False
        else:
            _api = trace
    return _api if isinstance(_api, ModuleType) else None


def stamped(events: list[Any], traceparent: str, tracestate: str | None) -> list[Any]:
    """``events`` with ``traceparent`` (and ``tracestate``) in each event object that has no
    ``traceparent``: copies of those, the others as they are (never changed in place)."""
    added = {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}
    return [
        {**event, **added} if isinstance(event, dict) and "traceparent" not in event else event
        for event in events
    ]


@contextmanager
def sending(queue: str, job_id: str, events: list[Any]) -> Iterator[list[Any]]:
    """Around the enqueue of one job: the events to send, stamped with the trace if one is active.

    The ``send`` span is made by eventworker's own tracer when this process traces
    (``eventworker serve``), else by the application's global one.
    """
    api = _trace_api()
    if api is None or not api.get_current_span().get_span_context().is_valid:
        yield events
        return
    caller = api.get_current_span().get_span_context()
    tracing = hooks.ACTIVE
    tracer = tracing.tracer() if tracing is not None else api.get_tracer("eventworker.producer")
    with tracer.start_as_current_span(
        f"send {queue}",
        kind=api.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "arq",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": queue,
            "messaging.message.id": job_id,
            "messaging.batch.message_count": len(events),
        },
    ) as span:
        # With no SDK in the process the span is not a real one: the caller's context travels instead.
        context = span.get_span_context() if span.get_span_context().is_valid else caller
        traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        yield stamped(events, traceparent, context.trace_state.to_header() or None)
