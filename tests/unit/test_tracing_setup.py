"""The SDK set-up from the standard variables, and the pieces of the spans that need no server."""

from __future__ import annotations

import sys

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from structlog.testing import capture_logs

import worker.tracing
from worker.errors import ConfigError
from worker.tracing import carry, hooks
from worker.tracing.otel import DropOrphanClients, add_trace_ids, remote_context
from worker.tracing.setup import exporters_from, sampler_from

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("environ", "description"),
    [
        ({}, ParentBased(ALWAYS_ON).get_description()),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, "AlwaysOnSampler"),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, "AlwaysOffSampler"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
            "TraceIdRatioBased{0.25}",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
            ParentBased(TraceIdRatioBased(0.01)).get_description(),
        ),
        (
            {"OTEL_TRACES_SAMPLER": "PARENTBASED_TRACEIDRATIO"},
            ParentBased(TraceIdRatioBased(1.0)).get_description(),
        ),
    ],
)
def test_the_sampler_is_the_one_the_variables_name(environ, description):
    """The six standard samplers, parentbased_always_on by default, the ratio from OTEL_TRACES_SAMPLER_ARG."""
    assert sampler_from(environ).get_description() == description


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "nan"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ],
)
def test_a_sampler_eventworker_cannot_honour_is_a_config_error(environ, setting):
    """Refused in one line naming the variable, where the SDK would quietly sample something else."""
    with pytest.raises(ConfigError) as caught:
        sampler_from(environ)
    assert str(caught.value).startswith(f"{setting}: ")


def test_the_exporters_are_the_ones_the_variables_name():
    """otlp over http/protobuf (the default, also when only an endpoint is set), console, none."""
    assert [type(e) for e in exporters_from({})] == [OTLPSpanExporter]
    assert [type(e) for e in exporters_from({"OTEL_TRACES_EXPORTER": "otlp,console"})] == [
        OTLPSpanExporter,
        ConsoleSpanExporter,
    ]
    assert exporters_from({"OTEL_TRACES_EXPORTER": "none"}) == []
    explicit = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert [type(e) for e in exporters_from(explicit)] == [OTLPSpanExporter]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin' is not an exporter"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json'"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: grpc needs"),
    ],
)
def test_an_exporter_eventworker_cannot_build_is_a_config_error(environ, message):
    """An unknown exporter or protocol (gRPC's exporter is not in the otel extra) is one line naming it."""
    with pytest.raises(ConfigError) as caught:
        exporters_from(environ)
    assert str(caught.value).startswith(message)


def test_client_spans_without_a_parent_are_dropped_and_others_sampled_as_configured():
    """A Redis poll or a heartbeat statement outside any span makes no trace; inside one it is kept."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=DropOrphanClients(ParentBased(ALWAYS_ON)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("ZRANGEBYSCORE", kind=SpanKind.CLIENT) as orphan:
        assert not orphan.is_recording()
    with (
        tracer.start_as_current_span("job", kind=SpanKind.CONSUMER),
        tracer.start_as_current_span("HSET", kind=SpanKind.CLIENT) as child,
    ):
        assert child.is_recording()
    assert [s.name for s in exporter.get_finished_spans()] == ["HSET", "job"]
    sampler = DropOrphanClients(ALWAYS_ON)
    assert sampler.should_sample(None, 1, "x", SpanKind.CLIENT).decision is Decision.DROP
    assert sampler.should_sample(None, 1, "x", SpanKind.SERVER).decision is Decision.RECORD_AND_SAMPLE


@pytest.mark.parametrize("value", [None, 3, "junk", TRACEPARENT.upper(), TRACEPARENT + "-x"])
def test_a_bad_remote_context_is_none(value):
    """A hostile traceparent gives no parent, never an exception."""
    assert remote_context(value, "a=1") is None


def test_a_remote_context_keeps_its_tracestate_unless_the_tracestate_is_bad():
    """The tracestate travels with a valid traceparent; a bad one is dropped alone."""
    context = remote_context(TRACEPARENT, "congo=t61rcWkgMzE")
    assert context is not None
    assert context.is_remote
    assert context.trace_flags.sampled
    assert context.trace_state.to_header() == "congo=t61rcWkgMzE"
    bad_state = remote_context(TRACEPARENT, "Bad Key=1")
    assert bad_state is not None
    assert len(bad_state.trace_state) == 0


def test_log_lines_inside_a_span_carry_its_ids_and_others_none():
    """The structlog processor adds trace_id and span_id of the current span, and nothing outside one."""
    assert add_trace_ids(None, "info", {"event": "outside"}) == {"event": "outside"}
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("job") as span:
        line = add_trace_ids(None, "info", {"event": "inside"})
        context = span.get_span_context()
    assert line == {
        "event": "inside",
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
    with structlog.testing.capture_logs(processors=[add_trace_ids]) as logs:
        with tracer.start_as_current_span("x") as span:
            structlog.get_logger().info("hello")
        structlog.get_logger().info("after")
    assert logs[0]["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "trace_id" not in logs[1]
    assert not trace.get_current_span().get_span_context().is_valid


def test_without_the_otel_extra_tracing_stays_off_with_one_warning(monkeypatch):
    """OTEL_* set but the SDK not installed: one warning naming the extra, and the process runs untraced."""
    monkeypatch.setitem(sys.modules, "worker.tracing.setup", None)  # what a missing package looks like
    monkeypatch.delattr(worker.tracing, "setup", raising=False)
    try:
        with capture_logs() as logs:
            started = hooks.start("eventworker", environ={"OTEL_TRACES_EXPORTER": "console"})
    finally:
        hooks.stop()  # had it started, nothing of it may reach the other tests
    assert started is None
    assert hooks.ACTIVE is None
    assert [(line["event"], line["fix"]) for line in logs] == [
        ("tracing.unavailable", "pip install 'eventworker[otel]'")
    ]


async def test_without_opentelemetry_a_producer_sends_its_events_as_they_are(monkeypatch):
    """The producer's hook with no OpenTelemetry installed: the very same list, no span."""
    monkeypatch.setattr(carry, "_api", False)
    events = [{"id": "1"}]
    with carry.sending("arq:queue", "job-1", events) as sent:
        assert sent is events


def test_with_no_span_active_a_producer_sends_its_events_as_they_are():
    """OpenTelemetry installed but the application traces nothing: no traceparent is invented."""
    events = [{"id": "1"}]
    with carry.sending("arq:queue", "job-1", events) as sent:
        assert sent is events
