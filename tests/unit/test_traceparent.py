"""W3C Trace Context values from outside: valid ones read exactly, everything else ignored, nothing raised."""

from __future__ import annotations

import pytest

from worker.tracing.carry import stamped
from worker.tracing.hooks import wanted
from worker.tracing.traceparent import (
    MAX_TRACESTATE_MEMBERS,
    TraceParent,
    choose_links,
    distinct_parents,
    parse_traceparent,
    parse_tracestate,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (VALID, TraceParent(int(TRACE, 16), int(SPAN, 16), 1)),
        (f"00-{TRACE}-{SPAN}-00", TraceParent(int(TRACE, 16), int(SPAN, 16), 0)),
        (f"  00-{TRACE}-{SPAN}-01\t", TraceParent(int(TRACE, 16), int(SPAN, 16), 1)),  # a header's spaces
        # A later version: the fields version 00 knows are read, the rest skipped, only "sampled" kept.
        (f"01-{TRACE}-{SPAN}-03-what-comes-next", TraceParent(int(TRACE, 16), int(SPAN, 16), 1)),
        (f"cc-{TRACE}-{SPAN}-00", TraceParent(int(TRACE, 16), int(SPAN, 16), 0)),
    ],
)
def test_a_valid_traceparent_is_read_exactly(value, expected):
    """Trace id, span id and flags come out as the specification reads them."""
    assert parse_traceparent(value) == expected


HOSTILE = [
    pytest.param(None, id="none"),
    pytest.param(1, id="a number"),
    pytest.param(True, id="a boolean"),
    pytest.param(b"00-" + TRACE.encode() + b"-" + SPAN.encode() + b"-01", id="bytes"),
    pytest.param({"traceparent": VALID}, id="an object"),
    pytest.param("", id="empty"),
    pytest.param("00", id="a version alone"),
    pytest.param(VALID.upper(), id="upper-case hex"),
    pytest.param(f"ff-{TRACE}-{SPAN}-01", id="version ff"),
    pytest.param(f"00-{'0' * 32}-{SPAN}-01", id="all-zero trace id"),
    pytest.param(f"00-{TRACE}-{'0' * 16}-01", id="all-zero span id"),
    pytest.param(f"00-{TRACE}-{SPAN}-01-extra", id="version 00 with more fields"),
    pytest.param(f"00-{TRACE}-{SPAN}-01extra", id="flags run on"),
    pytest.param(f"01-{TRACE}-{SPAN}-01extra", id="later version, no dash after flags"),
    pytest.param(f"00-{TRACE[:-1]}-{SPAN}-01", id="short trace id"),
    pytest.param(f"00-{TRACE}0-{SPAN}-01", id="long trace id"),
    pytest.param(f"00_{TRACE}_{SPAN}_01", id="wrong separators"),
    pytest.param(f"00-{TRACE[:-1]}g-{SPAN}-01", id="not hex"),
    pytest.param(f"00-{TRACE}-{SPAN}-1", id="one flag digit"),
    pytest.param(f"0x-{TRACE}-{SPAN}-01", id="bad version"),
    pytest.param(f"00-{TRACE}-{SPAN}-01\n", id="trailing newline"),
    pytest.param(f"00-{TRACE}-{SPAN}-01\x00", id="NUL"),
    pytest.param(f"00-{TRACE}-{SPAN}-01\r\nX-Injected: 1", id="header injection"),
    pytest.param("00-" + "٣" * 32 + f"-{SPAN}-01", id="non-ASCII digits"),
    pytest.param(f"01-{TRACE}-{SPAN}-01-" + "x" * 10_000, id="too long"),
    pytest.param("-".join(["00"] * 100_000), id="a megabyte of dashes"),
    pytest.param("\ud800" + VALID, id="lone surrogate"),
]


@pytest.mark.parametrize("value", HOSTILE)
def test_an_invalid_traceparent_reads_as_none(value):
    """Malformed, too long or hostile: ignored (None), never an exception."""
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("congo=t61rcWkgMzE", [("congo", "t61rcWkgMzE")]),
        ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", [("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")]),
        ("a=1, ,\tb=2,", [("a", "1"), ("b", "2")]),  # empty members are allowed
        ("tenant@system=x", [("tenant@system", "x")]),
        ("", []),
    ],
)
def test_a_valid_tracestate_is_read_in_order(value, expected):
    """Its members, in order."""
    assert parse_tracestate(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="none"),
        pytest.param(7, id="a number"),
        pytest.param("novalue", id="no equals"),
        pytest.param("Upper=1", id="upper-case key"),
        pytest.param("a=1,a=2", id="a key twice"),
        pytest.param("a=tab\there", id="a tab in the value"),
        pytest.param("a=x=y", id="equals in the value"),
        pytest.param("a=é", id="non-ASCII value"),
        pytest.param(",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS + 1)), id="too many members"),
        pytest.param("a=" + "x" * 600, id="too long"),
        pytest.param("a=1\r\nX-Injected: 1", id="header injection"),
    ],
)
def test_an_invalid_tracestate_is_dropped_whole(value):
    """One bad member drops the whole tracestate (the specification's rule); nothing is raised."""
    assert parse_tracestate(value) is None


def _header(trace: int, span: int, flags: int = 1) -> str:
    return TraceParent(trace, span, flags).header()


def test_distinct_parents_counts_each_context_once_in_the_order_first_seen():
    """A batch's traceparents: each valid context once, with how many events named it; the rest ignored."""
    a, b = _header(1, 1), _header(2, 2, 0)
    values = [a, None, b, a, "junk", 5, f" {a}", a, f"00-{TRACE}-{SPAN}-01".upper()]
    assert distinct_parents(values) == [(TraceParent(1, 1, 1), 4), (TraceParent(2, 2, 0), 1)]


@pytest.mark.parametrize(
    ("sampled", "unsampled", "limit", "kept", "left_out"),
    [
        (3, 0, 128, 3, 0),  # room for all: kept as they are
        (500, 0, 128, 128, 372),  # a batch of 500 events from 500 producers
        (100, 100, 128, 128, 72),  # the 100 sampled ones first, then 28 of the others
        (0, 200, 128, 128, 72),
        (5, 5, 0, 0, 10),  # OTEL_SPAN_LINK_COUNT_LIMIT=0: no link at all
    ],
)
def test_choose_links_keeps_sampled_contexts_first_up_to_the_limit(sampled, unsampled, limit, kept, left_out):
    """Under the SDK's link limit a span links the recorded traces first, each group in batch order."""
    parents = [(TraceParent(n + 1, 1, 0), 1) for n in range(unsampled)]
    parents += [(TraceParent(1000 + n, 1, 1), 1) for n in range(sampled)]
    chosen, dropped = choose_links(parents, limit)
    assert (len(chosen), dropped) == (kept, left_out)
    assert [p.sampled for p, _ in chosen] == sorted((p.sampled for p, _ in chosen), reverse=True)
    if kept >= min(sampled, limit):
        assert sum(p.sampled for p, _ in chosen) == min(sampled, limit)
    if len(parents) <= limit:
        assert chosen == parents


def test_stamped_adds_the_trace_only_where_none_is_and_changes_nothing_in_place():
    """An event with a traceparent (even a bad one) keeps it; others get copies; non-objects go as is."""
    own = {"id": "1", "traceparent": "not-a-traceparent"}
    bare = {"id": "2"}
    events = [own, bare, "not an event", 7]
    out = stamped(events, VALID, "congo=t61rcWkgMzE")
    assert out[0] is own
    assert out[1] == {"id": "2", "traceparent": VALID, "tracestate": "congo=t61rcWkgMzE"}
    assert bare == {"id": "2"}
    assert out[2:] == ["not an event", 7]
    assert stamped([bare], VALID, None) == [{"id": "2", "traceparent": VALID}]


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": " ", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_TRACES_EXPORTER": "none,console"}, True),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_SERVICE_NAME": "shop", "OTEL_TRACES_SAMPLER": "always_on"}, False),
    ],
)
def test_tracing_is_wanted_when_the_standard_variables_name_an_exporter(environ, on):
    """On with an exporter or an OTLP endpoint, off with none, with OTEL_SDK_DISABLED, or without either."""
    assert wanted(environ) is on
