"""The event statistics report, its pure part: what arrived in a time window, and how late.

Counts by type, by source, the top subjects, ingestion lag percentiles
(``received_at - time``) and dead letters by reason. Three independent queries find them
(:mod:`worker.db.sql.report_sql`: the counts, the lag sample, the dead letters; their results are
the shapes below: :class:`WindowCounts`, :class:`LagSample`, :data:`Counts`), and
:func:`jobs.stats.build_report` runs them, serially or fanned out over sessions, into a
:class:`Report`.

Here: window parsing, percentiles, the report's figures, the table and the JSON form. No
database and no event loop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.errors import InvalidArgument

_WINDOW = re.compile(r"\s*(?P<n>\d{1,6})\s*(?P<unit>[smhdw])\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: The longest window: ten years (and no timestamp arithmetic overflows).
MAX_WINDOW = timedelta(days=3660)
#: The lag percentiles reported.
PERCENTILES = (0.5, 0.9, 0.99)
#: Lag values fetched at most (a systematic sample); percentiles are exact up to this many events.
LAG_SAMPLE_SIZE = 10_000

#: (key, count) pairs, most frequent first.
Counts = list[tuple[str, int]]


def parse_window(text: str) -> timedelta:
    """``"15m"``, ``"1h"``, ``"24h"``, ``"7d"`` (units s, m, h, d, w) as a duration.

    Anything else raises :class:`~worker.errors.InvalidArgument` naming the argument.
    """
    match = _WINDOW.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidArgument(
            "window", text, "expected a whole number and a unit (s, m, h, d or w), e.g. 15m, 1h, 24h, 7d"
        )
    duration = timedelta(**{_UNITS[match["unit"]]: int(match["n"])})
    if not timedelta(0) < duration <= MAX_WINDOW:
        raise InvalidArgument("window", text, f"must be more than 0 and at most {MAX_WINDOW.days} days")
    return duration


@dataclass(frozen=True, slots=True)
class Window:
    """Arrival times ``start <= received_at < end``, both aware UTC."""

    start: datetime
    end: datetime
    label: str | None = None
    """How it was asked for, e.g. ``"1h"``."""

    @classmethod
    def last(cls, text: str, now: datetime | None = None) -> Window:
        """The window of length ``text`` (see :func:`parse_window`) ending ``now``."""
        end = now or datetime.now(UTC)
        return cls(start=end - parse_window(text), end=end, label=text.strip())


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation, as PostgreSQL's percentile_cont."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """A window's four counting figures, each as its own statement finds it (``report_sql.window_counts``)."""

    events: int
    by_type: Counts
    by_source: Counts
    top_subjects: Counts


@dataclass(frozen=True, slots=True)
class LagSample:
    """Ingestion lags in seconds (``received_at - time``) of events that carry a ``time``."""

    values: list[float]
    """The sampled lags, at most the sample size asked for, in no order."""
    events: int
    """How many events in the window carry a ``time`` (the sample's population)."""


@dataclass(frozen=True, slots=True)
class LagStats:
    """Ingestion lag (``received_at - time``) in seconds, over events that carry a ``time``."""

    events: int
    """Events in the window with a ``time``."""
    sampled: int
    """How many of them the percentiles are computed from (all of them up to the sample size)."""
    percentiles: dict[str, float | None]
    """``{"p50": ..., "p90": ..., "p99": ...}``; None when no event has a time."""
    max: float | None
    """The largest lag in the sample."""

    @classmethod
    def of(cls, sample: LagSample) -> LagStats:
        """Percentiles of a sample."""
        ordered = sorted(sample.values)  # once: sorting it again for each percentile is then linear
        return cls(
            events=sample.events,
            sampled=len(ordered),
            percentiles={_percentile_name(q): percentile(ordered, q) for q in PERCENTILES},
            max=ordered[-1] if ordered else None,
        )


def _percentile_name(q: float) -> str:
    return f"p{q * 100:g}"


@dataclass(frozen=True, slots=True)
class Timing:
    """How the report was built and how long each query took (its own time, not waits for a connection)."""

    fanned_out: bool
    wall_ms: float
    queries_ms: dict[str, float]

    @property
    def slowest(self) -> tuple[str, float]:
        """The slowest query and its time: the floor for a fanned-out report's wall time."""
        return max(self.queries_ms.items(), key=lambda item: item[1], default=("", 0.0))


@dataclass(frozen=True, slots=True)
class Report:
    """The figures of one window, and how long they took."""

    window: Window
    events: int
    by_type: Counts
    by_source: Counts
    top_subjects: Counts
    lag: LagStats
    dead_letters: Counts
    timing: Timing

    def figures(self) -> dict[str, Any]:
        """The JSON form without timing: equal for two reports that found the same."""
        data = to_json(self)
        del data["timing"]
        return data


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _pairs(counts: Counts, key: str) -> list[dict[str, Any]]:
    return [{key: value, "count": n} for value, n in counts]


def to_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data (what the job returns and ``eventworker stats --json`` prints)."""
    window = report.window
    return {
        "window": {"start": _iso(window.start), "end": _iso(window.end), "label": window.label},
        "events": report.events,
        "by_type": _pairs(report.by_type, "type"),
        "by_source": _pairs(report.by_source, "source"),
        "top_subjects": _pairs(report.top_subjects, "subject"),
        "lag_seconds": {
            "events": report.lag.events,
            "sampled": report.lag.sampled,
            **report.lag.percentiles,
            "max": report.lag.max,
        },
        "dead_letters_by_reason": _pairs(report.dead_letters, "reason"),
        "timing": {
            "fanned_out": report.timing.fanned_out,
            "wall_ms": report.timing.wall_ms,
            "queries_ms": report.timing.queries_ms,
        },
    }


#: Longer keys (sources can be 512 characters) are cut in the table; --json has them whole.
_KEY_WIDTH = 60


def _cut(text: str) -> str:
    return text if len(text) <= _KEY_WIDTH else text[: _KEY_WIDTH - 1] + "…"


def _section(heading: str, unit: str, counts: Counts) -> list[str]:
    rows = [(_cut(key), f"{n:,}") for key, n in counts] or [("(none)", "")]
    key_width = max(len(heading), *(2 + len(key) for key, _ in rows))
    count_width = max(len(unit), *(len(n) for _, n in rows))
    lines = [f"{heading:<{key_width}}  {unit:>{count_width}}"]
    lines += [f"  {key:<{key_width - 2}}  {n:>{count_width}}".rstrip() for key, n in rows]
    return [*lines, ""]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}s"


def format_table(report: Report, *, timing: bool = False) -> str:
    """The report as text tables for a terminal; with ``timing``, a last line on how the queries ran."""
    window, lag = report.window, report.lag
    label = f" ({window.label})" if window.label else ""
    lines = [f"events received {_iso(window.start)} .. {_iso(window.end)}{label}: {report.events:,}", ""]
    lines += _section("by type", "events", report.by_type)
    lines += _section("by source", "events", report.by_source)
    lines += _section("top subjects", "events", report.top_subjects)
    percentiles = "  ".join(f"{name} {_seconds(value)}" for name, value in lag.percentiles.items())
    lines += [
        f"ingestion lag (received_at - time): {lag.events:,} events with a time, {lag.sampled:,} sampled",
        f"  {percentiles}  max {_seconds(lag.max)}",
        "",
    ]
    lines += _section("dead letters by reason", "count", report.dead_letters)
    if timing:
        lines.append(_timing_line(report.timing))
    return "\n".join(lines).rstrip("\n")


def _timing_line(timing: Timing) -> str:
    slowest, slowest_ms = timing.slowest
    mode = "fanned out" if timing.fanned_out else "serial"
    queries = ", ".join(f"{name} {ms:.1f}" for name, ms in timing.queries_ms.items())
    return (
        f"{mode}: {timing.wall_ms:.1f} ms wall, slowest query {slowest} {slowest_ms:.1f} ms"
        f" (each query, ms: {queries})"
    )
