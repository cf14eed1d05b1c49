"""Tracing with OpenTelemetry: one trace from a producer's span through Redis, the worker and the handlers
to the SQL they ran.

The rest of eventworker knows only :mod:`worker.tracing.hooks`, which imports no OpenTelemetry: with
tracing off (the default) every hook is a test of one module attribute. The OpenTelemetry side is
the optional ``otel`` extra (``pip install 'eventworker[otel]'``): :mod:`~worker.tracing.setup` builds
the SDK from the standard ``OTEL_*`` variables and installs :mod:`~worker.tracing.otel`'s spans as the
hooks; :mod:`~worker.tracing.carry` puts a producer's trace into the events it sends;
:mod:`~worker.tracing.traceparent` reads (and refuses) W3C Trace Context values. docs/tracing.md
describes what a trace holds.
"""
