"""The dashboard page: a :class:`~worker.ops.status.Status` rendered as one HTML document. Pure: no I/O.

Server-rendered, with no script at all: every value goes through :func:`html.escape`
(dead letters' payloads are whatever a producer sent, and must show as text, never run),
the page reloads itself with ``<meta http-equiv="refresh">``, and the chart is inline SVG
(:mod:`worker.ops.dashboard.chart`). The one ``<style>`` element carries the response's nonce, so the
Content-Security-Policy (:func:`content_security_policy`) can forbid everything else.
"""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, Final

import orjson

from worker.ops.dashboard import chart as svgchart
from worker.ops.status import MinuteCount, Status, problems
from worker.ops.status_text import rollup_progress
from worker.runtime.tracking import CronStatus

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


def content_security_policy(nonce: str) -> str:
    """Nothing but this page's own nonce-tagged style and data: images; no script, frame, form or fetch."""
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src data:; base-uri 'none';"
        " form-action 'none'; frame-ancestors 'none'"
    )


def e(value: Any) -> str:
    """``value`` as escaped HTML text."""
    return html.escape("" if value is None else str(value), quote=True)


def _time(moment: datetime | None) -> str:
    return "never" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def _ago(now: datetime, moment: datetime | None) -> str:
    return "never" if moment is None else f"{(now - moment).total_seconds():.0f}s ago"


def _table(headers: list[str], rows: list[list[str]], css_id: str, empty: str = "none") -> str:
    """A table of already-escaped cells."""
    if not rows:
        return f'<p class="muted" id="{css_id}">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


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


def _chart(status: Status) -> str:
    since = status.chart_since
    if since is None:
        return '<p class="muted">no chart: the rollups could not be read</p>'
    labels, series = chart_series(status.chart, since, status.generated_at)
    totals = {name: sum(values) for name, values in series.items()}
    hours = (status.generated_at - since).total_seconds() / 3600
    title = f"events per minute by type, last {hours:.0f} hours (UTC, from the rollups)"
    if not series:
        return f'<p class="muted" id="chart-empty">no events in the last {hours:.0f} hours</p>'
    return f'<div id="chart">{svgchart.line_chart(series, labels, title=title)}</div>' + svgchart.legend(
        list(series), totals
    )


def _banner(status: Status) -> str:
    found = problems(status)
    if not found:
        return '<div class="banner ok" id="verdict">All well: workers alive, nothing stuck or failed.</div>'
    items = "".join(f"<li>{e(p)}</li>" for p in found)
    return f'<div class="banner bad" id="verdict"><b>Needs a look:</b><ul id="problems">{items}</ul></div>'


def _total(status: Status, section: str, counts: dict[str, int]) -> int | None:
    """The sum of a section's counts; None (shown as ?) when it could not be read, never a false 0."""
    return None if status.unread(section) else sum(counts.values())


def _live_workers(status: Status) -> str | None:
    return None if status.queue is None else f"{len(status.live_workers())}/{len(status.workers)}"


def _tiles(status: Status) -> str:
    queue, lag = status.queue, status.rollups
    tiles = [
        ("waiting", "jobs waiting", None if queue is None else queue.waiting),
        ("due", "due now", None if queue is None else queue.due),
        ("in-progress", "in progress", None if queue is None else queue.in_progress),
        ("oldest", "oldest due wait (s)", None if queue is None else f"{queue.oldest_due_age_s:.1f}"),
        ("workers", "live workers", _live_workers(status)),
        ("failed", "failed jobs", _total(status, "failed jobs", status.failed_by_job)),
        ("dead-letters", "dead letters", _total(status, "dead letters", status.dead_letters_by_reason)),
        ("rollup-lag", "events waiting for rollups", None if lag is None else lag.events),
    ]
    return (
        '<div class="tiles">'
        + "".join(
            f'<div class="tile"><b id="tile-{key}">{e("?" if value is None else value)}</b>{e(label)}</div>'
            for key, label, value in tiles
        )
        + "</div>"
    )


def _workers(status: Status) -> str:
    now = status.generated_at
    rows = []
    for w in status.workers:
        state = '<span class="stale">stale</span>' if w.is_stale(now) else "live"
        jobs_done = ", ".join(f"{k} {v}" for k, v in sorted(w.jobs_done.items()))
        port = "" if w.metrics_port is None else f":{w.metrics_port}"
        rows.append(
            [
                f'<span class="worker-id">{e(w.worker_id)}</span>',
                state,
                e(_ago(now, w.last_heartbeat)),
                f'<span class="num">{e(w.jobs_running)}</span>',
                e(jobs_done),
                e(_time(w.started_at)),
                e(port),
            ]
        )
    headers = ["worker", "state", "heartbeat", "running", "tries done", "up since", "metrics"]
    return _table(headers, rows, "workers", "no worker has a heartbeat in Redis")


def _running(status: Status) -> str:
    now = status.generated_at
    stuck = {run.job_id for run in status.stuck_jobs()}
    rows = [
        [
            e(run.job_id),
            e(run.job),
            e(run.job_try),
            e(run.worker_id),
            e(_ago(now, run.started_at))
            + (' <span class="stuck">stuck</span>' if run.job_id in stuck else ""),
        ]
        for run in status.running
    ]
    return _table(["job id", "job", "try", "worker", "started"], rows, "running", "no job running")


def _cron_row(now: datetime, cron: CronStatus) -> list[str]:
    start, done = cron.last_start, cron.last_finished
    started = "never" if start is None else _ago(now, start.started_at)
    if cron.running:
        started += " (running)"
    return [
        e(cron.job),
        e(started),
        e("-" if done is None else done.outcome),
        e("-" if done is None else _ago(now, done.finished_at)),
        e("" if done is None else done.worker_id),
        f"<pre>{e(done.error)}</pre>" if done is not None and done.error else "",
    ]


def _cron(status: Status) -> str:
    rows = [_cron_row(status.generated_at, cron) for cron in status.cron]
    return _table(["cron job", "last start", "outcome", "finished", "worker", "error"], rows, "cron")


def _counts_table(counts: dict[str, int], what: str, css_id: str) -> str:
    """Counts by ``what``; nothing at all when there are none (the list below says so)."""
    rows = [[e(name), f'<span class="num">{e(n)}</span>'] for name, n in sorted(counts.items())]
    return _table([what, "count"], rows, css_id) if rows else ""


def _errors_text(errors: Any) -> str:
    """A dead letter's validation errors, one ``where: what`` per line."""
    if not isinstance(errors, list):
        return orjson.dumps(errors).decode()
    return "\n".join(
        f"{error.get('loc') or '<event>'}: {error.get('msg')}" if isinstance(error, dict) else str(error)
        for error in errors
    )


def _failures(status: Status) -> str:
    rows = [
        [e(f.id), e(f.job), e(f.job_id), e(f.tries), e(_time(f.failed_at)), f"<pre>{e(f.error)}</pre>"]
        for f in status.recent_failures
    ]
    return _counts_table(status.failed_by_job, "job", "failed-by-job") + _table(
        ["#", "job", "job id", "tries", "failed at", "error"], rows, "failures", "no failed job"
    )


def _dead_letters(status: Status) -> str:
    rows = [
        [
            e(d.id),
            e(d.reason),
            e(_time(d.received_at)),
            f"<pre>{e(_errors_text(d.errors))}</pre>",
            f'<pre class="raw">{e(d.raw)}</pre>',
        ]
        for d in status.recent_dead_letters
    ]
    return _counts_table(status.dead_letters_by_reason, "reason", "dead-letters-by-reason") + _table(
        ["#", "reason", "received", "errors", "raw payload"], rows, "dead-letters", "no dead letter"
    )


def _handler_runs(status: Status) -> str:
    rows = [
        [
            e(name),
            f'<span class="num">{e(states.get("pending", 0))}</span>',
            f'<span class="num">{e(states.get("failed", 0))}</span>',
        ]
        for name, states in status.handler_runs.items()
    ]
    return _table(["handler", "pending", "failed"], rows, "handler-runs")


def _rollups(status: Status) -> str:
    lag = status.rollups
    if lag is None:
        return '<p class="muted">unknown</p>'
    now = status.generated_at
    updated = "never updated" if lag.position is None else f"updated {_ago(now, lag.updated_at)}"
    return f'<p id="rollups">{e(rollup_progress(lag, now))}; {e(updated)}</p>'


def render_page(status: Status, *, refresh_s: int, nonce: str) -> str:
    """The whole dashboard document for ``status``."""
    queue = e(status.queue_name)
    sections = [
        ("Events per minute", _chart(status)),
        ("Workers", _workers(status)),
        ("Jobs in progress", _running(status)),
        ("Cron jobs", _cron(status)),
        ("Rollups", _rollups(status)),
        ("Failed jobs", _failures(status)),
        ("Dead letters", _dead_letters(status)),
        ("Event handler runs", _handler_runs(status)),
    ]
    body = "".join(f"<h2>{e(title)}</h2>{content}" for title, content in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{int(refresh_s)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>eventworker: {queue}</title>"
        f'<style nonce="{e(nonce)}">{STYLE}</style></head><body>'
        f"<h1>eventworker: queue {queue}</h1>"
        f'<p class="muted">as of {e(_time(status.generated_at))} UTC, reloads every {int(refresh_s)}s;'
        ' the same as JSON: <a href="status.json">status.json</a></p>'
        f"{_banner(status)}{_tiles(status)}{body}</body></html>\n"
    )
