"""The report's pure part: windows, percentiles, the table and the JSON form."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from jobs.stats import fan_out_width
from worker.domain.report import (
    LagSample,
    LagStats,
    Report,
    Timing,
    Window,
    format_table,
    percentile,
    to_json,
)
from worker.errors import InvalidArgument, PermanentError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("30s", timedelta(seconds=30)),
        ("2w", timedelta(weeks=2)),
        (" 90m ", timedelta(minutes=90)),
        ("3660d", timedelta(days=3660)),
    ],
)
def test_windows_parse(text, expected):
    """A whole number and one unit letter make a window."""
    assert Window.last(text, NOW) == Window(NOW - expected, NOW, text.strip())


@pytest.mark.parametrize(
    "text", ["", "1", "h", "1.5h", "-1h", "1H", "1 hour", "1h30m", "0m", "3661d", None, 60]
)
def test_bad_windows_are_refused_naming_the_argument(text):
    """Anything else is a permanent error that names the argument and shows the expected form."""
    with pytest.raises(InvalidArgument) as caught:
        Window.last(text, NOW)
    assert isinstance(caught.value, PermanentError)
    assert str(caught.value).startswith(f"window={text!r}: ")
    assert caught.value.argument == "window"


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.5, None),
        ([3.0], 0.99, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 0.0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 1.0, 4.0),
        ([10.0, 20.0], 0.9, 19.0),
        (list(map(float, range(101))), 0.99, 99.0),
    ],
)
def test_percentiles_interpolate_like_percentile_cont(values, q, expected):
    """Linear interpolation between the closest ranks, in any input order."""
    assert percentile(values, q) == (None if expected is None else pytest.approx(expected))


def test_a_quantile_out_of_range_is_refused():
    """Quantiles are fractions."""
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile([1.0], 50)


@pytest.mark.parametrize("values", [[2.5, 0.5, 1.5, -1.0], [-1.0, 0.5, 1.5, 2.5], [1.5, 2.5, -1.0, 0.5]])
def test_lag_stats_do_not_depend_on_the_order_of_the_sample(values):
    """The sample comes in no order: percentiles, maximum and size are those of the values."""
    stats = LagStats.of(LagSample(values=values, events=9))
    assert (stats.events, stats.sampled, stats.max) == (9, 4, 2.5)
    assert stats.percentiles == {"p50": 1.0, "p90": pytest.approx(2.2), "p99": pytest.approx(2.47)}


def test_lag_stats_of_an_empty_sample_are_empty():
    """No event with a time: no percentiles and no maximum."""
    stats = LagStats.of(LagSample(values=[], events=0))
    assert (stats.sampled, stats.max) == (0, None)
    assert stats.percentiles == {"p50": None, "p90": None, "p99": None}


def _report() -> Report:
    return Report(
        window=Window(NOW - timedelta(hours=1), NOW, "1h"),
        events=1234,
        by_type=[("com.example.order.created", 1000), ("com.example.order.paid", 234)],
        by_source=[("/shop/" + "x" * 80, 1234)],
        top_subjects=[],
        lag=LagStats.of(LagSample(values=[0.5, 1.5, 2.5], events=1200)),
        dead_letters=[("invalid", 7)],
        timing=Timing(fanned_out=True, wall_ms=12.5, queries_ms={"counts": 3.0, "lag": 9.25}),
    )


def test_the_json_form_is_plain_json_with_every_figure():
    """Windows as RFC 3339, counts as objects, lag percentiles by name, timing apart."""
    data = to_json(_report())
    assert json.loads(json.dumps(data)) == data
    assert data["window"] == {"start": "2026-03-01T11:00:00Z", "end": "2026-03-01T12:00:00Z", "label": "1h"}
    assert data["by_type"][0] == {"type": "com.example.order.created", "count": 1000}
    assert data["lag_seconds"] == {
        "events": 1200,
        "sampled": 3,
        "p50": 1.5,
        "p90": 2.3,
        "p99": 2.48,
        "max": 2.5,
    }
    assert data["timing"] == {"fanned_out": True, "wall_ms": 12.5, "queries_ms": {"counts": 3.0, "lag": 9.25}}
    assert "timing" not in _report().figures()


def test_the_table_shows_every_section_and_the_slowest_query():
    """One heading per figure, counts right-aligned with separators, long keys cut, timing last if asked."""
    assert "fanned out" not in format_table(_report())
    table = format_table(_report(), timing=True)
    lines = table.splitlines()
    assert lines[0] == "events received 2026-03-01T11:00:00Z .. 2026-03-01T12:00:00Z (1h): 1,234"
    assert "by type                      events" in lines
    assert "  com.example.order.created   1,000" in lines
    assert "  com.example.order.paid        234" in lines
    assert any(line.startswith("  /shop/xxx") and "…" in line for line in lines)
    assert "top subjects  events" in lines
    assert "  (none)" in lines
    assert "  p50 1.500s  p90 2.300s  p99 2.480s  max 2.500s" in lines
    assert lines[-1].startswith("fanned out: 12.5 ms wall, slowest query lag 9.2 ms")


def _engine(**options) -> AsyncEngine:
    return create_async_engine("sqlite+aiosqlite:///unused.db", **options)


@pytest.mark.parametrize(
    ("options", "queries", "width"),
    [
        ({"pool_size": 5, "max_overflow": 5}, 6, 5),
        ({"pool_size": 1, "max_overflow": 0}, 6, 1),
        ({"pool_size": 20}, 6, 6),
        ({"poolclass": NullPool}, 6, 6),
        ({"poolclass": StaticPool}, 6, 1),
    ],
)
def test_the_fan_out_is_never_wider_than_the_pool_keeps(options, queries, width):
    """At most pool_size queries at once (overflow is for other jobs); one on a single-connection pool."""
    assert fan_out_width(_engine(**options), queries) == width
