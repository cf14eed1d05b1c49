"""A :class:`~worker.ops.status.Status` as text for a terminal, or as JSON for scripts. Pure: no I/O.

The JSON keeps the dataclasses' field names, times as ISO 8601 UTC, and adds what is derived
(``stale``, ``stuck``, ``running``, ``problems``) so that a script need not compute it. A section
that could not be read is ``unknown`` in the text and ``null`` in the JSON, never zero or empty.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import orjson

from worker.db.sql.status_sql import RollupLag
from worker.domain.text import describe_errors
from worker.ops.status import REDIS_SECTION, Status, problems
from worker.runtime.tracking import CronStatus

JsonDict = dict[str, Any]

#: The fields each section fills; null in the JSON when the section could not be read.
SECTION_FIELDS = {
    REDIS_SECTION: ("queue", "workers", "running", "cron"),
    "failed jobs": ("failed_by_job", "recent_failures"),
    "dead letters": ("dead_letters_by_reason", "recent_dead_letters"),
    "handler runs": ("handler_runs",),
    "rollups": ("rollups",),
    "chart": ("chart", "chart_since"),
}
#: What the text says of a section that could not be read (the problems above it say why).
UNKNOWN = "unknown (could not read)"


def _ago(now: datetime, moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "none"


def to_json(status: Status) -> JsonDict:
    """``status`` as plain JSON-ready data, with the derived verdicts added."""
    now = status.generated_at
    data: JsonDict = dataclasses.asdict(status)
    if status.queue is not None:
        data["queue"]["deferred"] = status.queue.deferred
    for worker, record in zip(status.workers, data["workers"], strict=True):
        record["stale"] = worker.is_stale(now)
        record["heartbeat_age_s"] = round(worker.age_s(now), 3)
    stuck = {run.job_id for run in status.stuck_jobs()}
    for record in data["running"]:
        record["stuck"] = record["job_id"] in stuck
    for cron, record in zip(status.cron, data["cron"], strict=True):
        record["running"] = cron.running
    if status.rollups is not None:
        data["rollups"]["capped"] = status.rollups.capped
    for section in status.errors:
        for name in SECTION_FIELDS.get(section, ()):
            data[name] = None
    data["problems"] = problems(status)
    return data


def dumps(status: Status) -> bytes:
    """``status`` as indented JSON."""
    return orjson.dumps(to_json(status), option=orjson.OPT_INDENT_2 | orjson.OPT_UTC_Z)


def _queue_lines(status: Status) -> list[str]:
    queue = status.queue
    if queue is None:
        return [f"queue {status.queue_name}: {UNKNOWN}"]
    return [
        f"queue {queue.name}: {queue.waiting} waiting ({queue.due} due, {queue.deferred} deferred),"
        f" {queue.in_progress} in progress, oldest due job waiting {queue.oldest_due_age_s:.1f}s"
    ]


def _worker_lines(status: Status) -> list[str]:
    if status.unread(REDIS_SECTION):
        return [f"workers: {UNKNOWN}"]
    now = status.generated_at
    lines = [f"workers: {len(status.live_workers())} live, {len(status.stale_workers())} stale"]
    for w in status.workers:
        state = "STALE" if w.is_stale(now) else "live"
        port = f", metrics on :{w.metrics_port}" if w.metrics_port is not None else ""
        lines.append(
            f"  {w.worker_id}  {state}  heartbeat {_ago(now, w.last_heartbeat)}, {w.jobs_running} running,"
            f" done {_counts(w.jobs_done)}, up since {w.started_at:%Y-%m-%d %H:%M:%S}{port}"
        )
    return lines


def _running_lines(status: Status) -> list[str]:
    if status.unread(REDIS_SECTION):
        return [f"jobs in progress: {UNKNOWN}"]
    now = status.generated_at
    stuck = {run.job_id for run in status.stuck_jobs()}
    lines = [f"jobs in progress: {len(status.running)}"]
    for run in status.running:
        flag = "  STUCK" if run.job_id in stuck else ""
        lines.append(
            f"  {run.job_id}  {run.job}  try {run.job_try}  on {run.worker_id}"
            f"  started {_ago(now, run.started_at)}{flag}"
        )
    return lines


def _cron_line(now: datetime, cron: CronStatus) -> str:
    start, done = cron.last_start, cron.last_finished
    if start is None and done is None:
        return f"  {cron.job}: never ran"
    parts = [f"  {cron.job}:"]
    if cron.running and start is not None:
        parts.append(f"running since {_ago(now, start.started_at)} on {start.worker_id};")
    if done is not None:
        parts.append(f"last run {_ago(now, done.finished_at)} {done.outcome} on {done.worker_id}")
        if done.error:
            parts.append(f"({done.error})")
    return " ".join(parts)


def _failure_lines(status: Status) -> list[str]:
    if status.unread("failed jobs"):
        return [f"failed jobs: {UNKNOWN}"]
    lines = [f"failed jobs: {sum(status.failed_by_job.values())} ({_counts(status.failed_by_job)})"]
    for f in status.recent_failures:
        lines.append(
            f"  #{f.id} {f.job} (job {f.job_id}, {f.tries} tries) at {f.failed_at:%Y-%m-%d %H:%M:%S}:"
        )
        lines.append(f"      {f.error.splitlines()[0] if f.error else ''}")
    return lines


def _dead_letter_lines(status: Status) -> list[str]:
    if status.unread("dead letters"):
        return [f"dead letters: {UNKNOWN}"]
    counts = status.dead_letters_by_reason
    lines = [f"dead letters: {sum(counts.values())} ({_counts(counts)})"]
    for d in status.recent_dead_letters:
        errors = describe_errors(d.errors)
        lines.append(f"  #{d.id} {d.reason} at {d.received_at:%Y-%m-%d %H:%M:%S}: {errors}")
    return lines


def rollup_progress(lag: RollupLag, now: datetime) -> str:
    """How far the rollups have got, as a person can use it: the last event counted, the events waiting."""
    more = "+" if lag.capped else ""  # counted up to LAG_CAP
    waiting = f"{lag.events:,}{more} {'event' if lag.events == 1 else 'events'} waiting to be counted"
    if not lag.position:
        return f"no event counted yet; {waiting}"
    if lag.last_counted_at is None:
        return f"the last event counted has been deleted since; {waiting}"
    moment = lag.last_counted_at
    return (
        f"the last event counted was received {moment:%Y-%m-%d %H:%M:%S} UTC ({_ago(now, moment)}); {waiting}"
    )


def _rollups_line(lag: RollupLag, now: datetime) -> str:
    if lag.position is None:
        return f"rollups: never updated, {rollup_progress(lag, now)}"
    return f"rollups: {rollup_progress(lag, now)}; updated {_ago(now, lag.updated_at)}"


def _other_lines(status: Status) -> list[str]:
    now = status.generated_at
    if status.unread(REDIS_SECTION):
        lines = [f"cron jobs: {UNKNOWN}"]
    else:
        lines = ["cron jobs:", *[_cron_line(now, cron) for cron in status.cron]]
    if status.unread("rollups"):
        lines.append(f"rollups: {UNKNOWN}")
    if status.rollups is not None:
        lines.append(_rollups_line(status.rollups, now))
    if status.unread("handler runs"):
        lines.append(f"handler runs: {UNKNOWN}")
    elif status.handler_runs:
        lines.append(
            "handler runs: "
            + "; ".join(f"{name} {_counts(states)}" for name, states in status.handler_runs.items())
        )
    return lines


def _replica_lines(status: Status) -> list[str]:
    """Where the database sections were read, and how far the read replica is behind (DATABASE_READ_URL)."""
    lag = status.replica
    if lag is None:
        return []
    behind = "?" if lag.bytes_behind is None else f"{lag.bytes_behind:,}"
    where = "read from it" if lag.used else f"bypassed, read from the primary ({lag.reason})"
    kind = "" if lag.standby or not lag.used else " (not a standby: promoted?)"
    return [f"read replica{kind}: {lag.seconds:.1f}s behind ({behind} bytes of WAL); {where}"]


def to_text(status: Status) -> list[str]:
    """``status`` as lines for a terminal, the problems first."""
    found = problems(status)
    lines = [f"status at {status.generated_at:%Y-%m-%d %H:%M:%S} UTC: {'OK' if not found else 'PROBLEMS'}"]
    lines += [f"  ! {problem}" for problem in found]
    sections = (_queue_lines, _worker_lines, _running_lines, _replica_lines, _other_lines, _failure_lines)
    for section in sections:
        lines += section(status)
    return lines + _dead_letter_lines(status)
