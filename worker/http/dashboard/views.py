"""What the dashboard page shows, from a :class:`~worker.ops.status.Status`: plain values for the
templates, which escape every one of them (Jinja2 with autoescaping). Pure: no I/O.

The chart is the one piece of markup made here, by :mod:`worker.http.dashboard.chart`, which
escapes every text it draws; it is handed to the template as :class:`markupsafe.Markup`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import orjson
from markupsafe import Markup

from worker.http.dashboard import chart as svgchart
from worker.ops.status import MinuteCount, Status, problems
from worker.ops.status_text import rollup_progress

#: Event types drawn as their own line; the rest are summed as "other types".
CHART_SERIES: Final = 7

STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:.8em 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .4em;border-bottom:1px solid #ccc}
.muted{color:#666}.ok{background:#e6f4ea;border:1px solid #9c9}.bad{background:#fdecea;border:1px solid #d99}
.banner{padding:.5em 1em;margin:.6em 0}.banner ul{margin:.2em 0}
.tiles{display:flex;flex-wrap:wrap;gap:.6em}
.tile{background:#fff;border:1px solid #ddd;padding:.4em .8em;min-width:9em}
.tile b{display:block;font-size:1.6em}table{border-collapse:collapse;background:#fff;margin:.3em 0}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}
.num{text-align:right;font-variant-numeric:tabular-nums}.stale,.stuck{color:#b00;font-weight:bold}
pre{white-space:pre-wrap;word-break:break-all;max-width:70em;max-height:12em;overflow:auto;margin:0;
background:#f4f4f4;padding:.3em}.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:1em}
"""


def chart_series(
    counts: list[MinuteCount], since: datetime, until: datetime, keep: int = CHART_SERIES
) -> tuple[list[str], dict[str, list[float]]]:
    """Minute labels from ``since`` to ``until`` and one list of counts per type (0 where none).

    The ``keep`` types with the most events get a line each; the others share one.
    """
    minutes: list[datetime] = []
    minute = since.replace(second=0, microsecond=0)
    while minute <= until:
        minutes.append(minute)
        minute += timedelta(minutes=1)
    index = {m: i for i, m in enumerate(minutes)}
    totals: dict[str, int] = defaultdict(int)
    for count in counts:
        totals[count.type] += count.events
    ranked = sorted(totals, key=lambda t: (-totals[t], t))
    kept = set(ranked[:keep])
    series: dict[str, list[float]] = {name: [0.0] * len(minutes) for name in ranked[:keep]}
    for count in counts:
        i = index.get(count.minute)
        if i is not None:
            name = count.type if count.type in kept else "other types"
            series.setdefault(name, [0.0] * len(minutes))[i] += count.events
    return [f"{m:%H:%M}" for m in minutes], series


def clock(moment: datetime | None) -> str:
    return "never" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def ago(now: datetime, moment: datetime | None) -> str:
    return "never" if moment is None else f"{(now - moment).total_seconds():.0f}s ago"


def errors_text(errors: Any) -> str:
    """A dead letter's validation errors, one ``where: what`` per line."""
    if not isinstance(errors, list):
        return orjson.dumps(errors).decode()
    return "\n".join(
        f"{error.get('loc') or '<event>'}: {error.get('msg')}" if isinstance(error, dict) else str(error)
        for error in errors
    )


@dataclass(frozen=True, slots=True)
class Chart:
    """The chart's SVG and legend, or why there is none."""

    svg: Markup | None = None
    legend: Markup | None = None
    empty: str | None = None
    empty_id: str | None = None


@dataclass(slots=True)
class Page:
    """Everything the page template shows."""

    queue: str
    generated_at: str
    problems: list[str]
    tiles: list[tuple[str, str, str]]
    chart: Chart
    workers: list[dict[str, Any]] = field(default_factory=list)
    running: list[dict[str, Any]] = field(default_factory=list)
    cron: list[dict[str, Any]] = field(default_factory=list)
    rollups: str | None = None
    failed_by_job: list[tuple[str, int]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    dead_letters_by_reason: list[tuple[str, int]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    handler_runs: list[tuple[str, int, int]] = field(default_factory=list)
    failed_handler_runs: int = 0


def _chart(status: Status) -> Chart:
    since = status.chart_since
    if since is None:
        return Chart(empty="no chart: the rollups could not be read")
    labels, series = chart_series(status.chart, since, status.generated_at)
    hours = (status.generated_at - since).total_seconds() / 3600
    if not series:
        return Chart(empty=f"no events in the last {hours:.0f} hours", empty_id="chart-empty")
    title = f"events per minute by type, last {hours:.0f} hours (UTC, from the rollups)"
    totals = {name: sum(values) for name, values in series.items()}
    return Chart(
        svg=Markup(svgchart.line_chart(series, labels, title=title)),  # noqa: S704 - chart escapes its texts
        legend=Markup(svgchart.legend(list(series), totals)),  # noqa: S704 - as above
    )


def _tiles(status: Status) -> list[tuple[str, str, str]]:
    queue, lag = status.queue, status.rollups

    def total(section: str, counts: dict[str, int]) -> int | None:
        return None if status.unread(section) else sum(counts.values())

    live = None if queue is None else f"{len(status.live_workers())}/{len(status.workers)}"
    tiles = [
        ("waiting", "jobs waiting", None if queue is None else queue.waiting),
        ("due", "due now", None if queue is None else queue.due),
        ("in-progress", "in progress", None if queue is None else queue.in_progress),
        ("oldest", "oldest due wait (s)", None if queue is None else f"{queue.oldest_due_age_s:.1f}"),
        ("workers", "live workers", live),
        ("failed", "failed jobs", total("failed jobs", status.failed_by_job)),
        ("dead-letters", "dead letters", total("dead letters", status.dead_letters_by_reason)),
        ("rollup-lag", "events waiting for rollups", None if lag is None else lag.events),
    ]
    return [(key, label, "?" if value is None else str(value)) for key, label, value in tiles]


def _rollups(status: Status) -> str | None:
    lag = status.rollups
    if lag is None:
        return None
    now = status.generated_at
    updated = "never updated" if lag.position is None else f"updated {ago(now, lag.updated_at)}"
    return f"{rollup_progress(lag, now)}; {updated}"


def page(status: Status) -> Page:
    """The page's contents for ``status``."""
    now = status.generated_at
    stuck = {run.job_id for run in status.stuck_jobs()}
    view = Page(
        queue=status.queue_name,
        generated_at=clock(now),
        problems=problems(status),
        tiles=_tiles(status),
        chart=_chart(status),
        rollups=_rollups(status),
    )
    view.workers = [
        {
            "id": w.worker_id,
            "stale": w.is_stale(now),
            "heartbeat": ago(now, w.last_heartbeat),
            "running": w.jobs_running,
            "done": ", ".join(f"{k} {v}" for k, v in sorted(w.jobs_done.items())),
            "since": clock(w.started_at),
            "port": "" if w.metrics_port is None else f":{w.metrics_port}",
        }
        for w in status.workers
    ]
    view.running = [
        {
            "job_id": run.job_id,
            "job": run.job,
            "try": run.job_try,
            "worker": run.worker_id,
            "started": ago(now, run.started_at),
            "stuck": run.job_id in stuck,
        }
        for run in status.running
    ]
    view.cron = [_cron(now, cron) for cron in status.cron]
    view.failed_by_job = sorted(status.failed_by_job.items())
    view.failures = [
        {
            "id": f.id,
            "job": f.job,
            "job_id": f.job_id,
            "tries": f.tries,
            "at": clock(f.failed_at),
            "error": f.error,
        }
        for f in status.recent_failures
    ]
    view.dead_letters_by_reason = sorted(status.dead_letters_by_reason.items())
    view.dead_letters = [
        {
            "id": d.id,
            "reason": d.reason,
            "at": clock(d.received_at),
            "errors": errors_text(d.errors),
            "raw": d.raw,
            "redrivable": d.reason in ("invalid", "too_large"),
        }
        for d in status.recent_dead_letters
    ]
    view.handler_runs = [
        (name, states.get("pending", 0), states.get("failed", 0))
        for name, states in status.handler_runs.items()
    ]
    view.failed_handler_runs = sum(failed for _name, _pending, failed in view.handler_runs)
    return view


def _cron(now: datetime, cron: Any) -> dict[str, Any]:
    start, done = cron.last_start, cron.last_finished
    started = "never" if start is None else ago(now, start.started_at)
    return {
        "job": cron.job,
        "started": started + (" (running)" if cron.running else ""),
        "outcome": "-" if done is None else done.outcome,
        "finished": "-" if done is None else ago(now, done.finished_at),
        "worker": "" if done is None else done.worker_id,
        "error": done.error if done is not None and done.error else "",
    }
