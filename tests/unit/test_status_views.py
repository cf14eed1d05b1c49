"""What status and the dashboard make of a Status: the problems, the text, the JSON, the page, the chart.

Pure functions on hand-built Status values; the page is checked for escaping above all: a dead
letter's payload is attacker-controlled text.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from markupsafe import escape

from worker.db.sql.status_sql import RollupLag
from worker.http.dashboard import chart as svgchart
from worker.http.dashboard.render import content_security_policy, render_page
from worker.http.dashboard.views import chart_series
from worker.ops import status_text as statusfmt
from worker.ops.status import DeadLetterInfo, FailedJobInfo, MinuteCount, Status, problems
from worker.runtime.queuestats import QueueSample
from worker.runtime.tracking import CronRun, CronStatus, RunningJob, WorkerBeat

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
SCRIPT = "<script>document.title='pwned'</script>"


def beat(worker_id: str, age_s: float) -> WorkerBeat:
    host, _, pid = worker_id.rpartition(":")
    return WorkerBeat(
        worker_id, host, int(pid), NOW - timedelta(hours=1), NOW - timedelta(seconds=age_s), 10, 1, {"ok": 5}
    )


def healthy() -> Status:
    return Status(
        generated_at=NOW,
        queue_name="q",
        queue=QueueSample("q", waiting=4, due=3, in_progress=1, oldest_due_age_s=0.5),
        workers=[beat("a:1", 1), beat("b:2", 2)],
        running=[
            RunningJob(
                "j1", "ingest_events", "a:1", 1, NOW - timedelta(seconds=3), NOW + timedelta(minutes=1)
            )
        ],
        cron=[CronStatus("update_rollups", None, None)],
        rollups=RollupLag(
            position=10,
            updated_at=NOW - timedelta(seconds=30),
            events=12,
            last_counted_at=NOW - timedelta(seconds=45),
        ),
        chart_since=NOW - timedelta(minutes=10),
    )


def troubled() -> Status:
    status = healthy()
    status.workers.append(beat("c:3", 100))
    status.running.append(
        RunningJob("j2", "export_events", "c:3", 2, NOW - timedelta(minutes=2), NOW + timedelta(minutes=1))
    )
    status.queue = QueueSample("q", waiting=900, due=900, in_progress=2, oldest_due_age_s=75)
    start = CronRun("update_rollups", "t1", "a:1", NOW - timedelta(seconds=65))
    done = CronRun(
        "update_rollups", "t1", "a:1", start.started_at, NOW - timedelta(seconds=64), "error", "Boom: x"
    )
    status.cron = [CronStatus("update_rollups", start, done)]
    status.failed_by_job = {"rebuild_rollups": 2}
    status.recent_failures = [FailedJobInfo(1, "jid", "rebuild_rollups", 5, NOW, f"TypeError: {SCRIPT}")]
    status.dead_letters_by_reason = {"invalid": 1}
    status.recent_dead_letters = [
        DeadLetterInfo(
            7, "invalid", NOW, "jid", 0, [{"loc": "id", "msg": "Field required"}], f'{{"data": "{SCRIPT}"}}'
        )
    ]
    status.errors = {"handler runs": "OperationalError: gone"}
    return status


def test_a_healthy_status_has_no_problems():
    """Live workers, nothing stuck, no backlog or failure: nothing to report."""
    assert problems(healthy()) == []


def test_problems_name_what_is_stale_stuck_late_and_failed():
    """Each trouble is one line naming the worker, job or count a person acts on."""
    assert problems(troubled()) == [
        "could not read handler runs: OperationalError: gone",
        "worker c:3: last heartbeat 100s ago (stale after 30s)",
        "job j2 (export_events) stuck on worker c:3 since 05:04:07",
        "backlog: 900 due jobs, the oldest waiting 75s",
        "cron job update_rollups: last run ended error: Boom: x",
        "failed jobs: 2 (`eventworker failed list`)",
    ]


def test_no_worker_at_all_is_a_problem():
    """An empty worker list is reported unless Redis could not be read at all."""
    status = healthy()
    status.workers = []
    assert problems(status) == ["no live worker on queue q"]
    status.errors = {"redis": "ConnectionError: down"}
    assert problems(status) == ["could not read redis: ConnectionError: down"]


def test_json_adds_the_verdicts():
    """The JSON carries every section plus stale/stuck flags and the problems, times in UTC with Z."""
    data = orjson.loads(statusfmt.dumps(troubled()))
    assert data["generated_at"] == "2026-03-04T05:06:07Z"
    assert [(w["worker_id"], w["stale"]) for w in data["workers"]] == [
        ("a:1", False),
        ("b:2", False),
        ("c:3", True),
    ]
    assert [(r["job_id"], r["stuck"]) for r in data["running"]] == [("j1", False), ("j2", True)]
    assert data["queue"] == {
        "name": "q",
        "waiting": 900,
        "due": 900,
        "in_progress": 2,
        "oldest_due_age_s": 75,
        "deferred": 0,
    }
    assert data["failed_by_job"] == {"rebuild_rollups": 2}
    assert data["dead_letters_by_reason"] == {"invalid": 1}
    assert data["rollups"] == {
        "position": 10,
        "updated_at": "2026-03-04T05:05:37Z",
        "events": 12,
        "last_counted_at": "2026-03-04T05:05:22Z",
        "capped": False,
    }
    assert data["cron"][0]["running"] is False
    assert data["problems"] == problems(troubled())


def test_text_starts_with_the_verdict():
    """The first line says OK or PROBLEMS; each section follows with its figures."""
    lines = statusfmt.to_text(healthy())
    assert lines[0] == "status at 2026-03-04 05:06:07 UTC: OK"
    assert "queue q: 4 waiting (3 due, 1 deferred), 1 in progress, oldest due job waiting 0.5s" in lines
    assert "workers: 2 live, 0 stale" in lines
    assert "  update_rollups: never ran" in lines
    assert (
        "rollups: the last event counted was received 2026-03-04 05:05:22 UTC (45.0s ago);"
        " 12 events waiting to be counted; updated 30.0s ago"
    ) in lines
    text = statusfmt.to_text(troubled())
    assert text[0].endswith("PROBLEMS")
    assert "  ! worker c:3: last heartbeat 100s ago (stale after 30s)" in text


@pytest.mark.parametrize(
    ("lag", "line"),
    [
        (
            RollupLag(None, None, 3),
            "rollups: never updated, no event counted yet; 3 events waiting to be counted",
        ),
        (
            RollupLag(0, NOW, 1),
            "rollups: no event counted yet; 1 event waiting to be counted; updated 0.0s ago",
        ),
        (
            RollupLag(7, NOW, 1_000_000),
            "rollups: the last event counted has been deleted since; 1,000,000+ events waiting to be counted;"
            " updated 0.0s ago",
        ),
    ],
)
def test_the_rollups_line_says_what_is_counted_and_what_waits(lag, line):
    """No checkpoint number: what is waiting, and when the last event counted came."""
    status = healthy()
    status.rollups = lag
    assert line in statusfmt.to_text(status)


def test_what_could_not_be_read_is_unknown_never_zero():
    """A section that failed reads "unknown" in the text and null in the JSON; one problem line per reason."""
    status = healthy()
    status.workers, status.running, status.cron, status.queue = [], [], [], None
    status.rollups = None
    reason = "the database schema was never migrated ...: run `eventworker migrate` ..."
    status.errors = {"redis": "ConnectionError: down"} | {
        s: reason for s in ("failed jobs", "dead letters", "rollups")
    }
    lines = statusfmt.to_text(status)
    assert lines[1:3] == [
        "  ! could not read redis: ConnectionError: down",
        f"  ! could not read failed jobs, dead letters, rollups: {reason}",
    ]
    for line in (
        "queue q",
        "workers",
        "jobs in progress",
        "cron jobs",
        "rollups",
        "failed jobs",
        "dead letters",
    ):
        assert f"{line}: unknown (could not read)" in lines
    assert not any(line.startswith(("failed jobs: 0", "dead letters: 0")) for line in lines)
    data = orjson.loads(statusfmt.dumps(status))
    for key in ("queue", "workers", "running", "cron", "failed_by_job", "dead_letters_by_reason", "rollups"):
        assert data[key] is None, key
    assert data["handler_runs"] == {}  # read, and none
    page = render_page(status, refresh_s=10, nonce="n")
    for tile in ("workers", "failed", "dead-letters", "rollup-lag"):
        assert f'<b id="tile-{tile}">?</b>' in page


def test_the_page_shows_payloads_as_text_never_as_markup():
    """Every producer-controlled string is escaped: no <script> element can come out of a payload."""
    page = render_page(troubled(), refresh_s=7, nonce="n0nce")
    assert "<script" not in page.lower()
    assert str(escape(SCRIPT)) in page  # as Jinja2 escapes it
    assert '<meta http-equiv="refresh" content="7">' in page
    assert '<style nonce="n0nce">' in page
    assert re.search(r'<b id="tile-waiting">900</b>', page)
    assert re.search(r'<b id="tile-workers">2/3</b>', page)
    assert '<span class="stale">stale</span>' in page
    assert '<span class="stuck">stuck</span>' in page


@pytest.mark.parametrize("name", ["a:1", '"><img src=x onerror=alert(1)>'])
def test_the_page_escapes_names_in_attributes_and_text(name):
    """A hostile queue, worker or event type name stays text, also inside the SVG's attributes."""
    status = healthy()
    status.queue_name = name
    status.workers = [beat(f"{name}:1", 1)]
    status.chart = [MinuteCount(NOW - timedelta(minutes=2), name, 3)]
    page = render_page(status, refresh_s=10, nonce="n")
    assert "<img" not in page
    assert str(escape(name)) in page


def test_the_policy_allows_only_the_nonced_style():
    """No script, no frame; forms to this server only; styles only with the response's nonce; data: images."""
    policy = content_security_policy("abc")
    assert policy.startswith("default-src 'none'; style-src 'nonce-abc'; img-src data:")
    assert "script-src" not in policy
    assert "form-action 'self'" in policy
    assert "frame-ancestors 'none'" in policy


def test_chart_series_fill_every_minute_and_group_the_rest():
    """Minutes without events are 0; the most frequent types get lines, the others share one."""
    since = NOW.replace(second=0) - timedelta(minutes=3)
    counts = [
        MinuteCount(since, "a", 5),
        MinuteCount(since + timedelta(minutes=2), "a", 1),
        MinuteCount(since + timedelta(minutes=1), "b", 3),
        MinuteCount(since + timedelta(minutes=1), "c", 1),
        MinuteCount(since - timedelta(minutes=1), "a", 99),  # before the window: dropped
    ]
    labels, series = chart_series(counts, since, NOW, keep=2)
    assert labels == ["05:03", "05:04", "05:05", "05:06"]
    assert series == {"a": [5, 0, 1, 0], "b": [0, 3, 0, 0], "other types": [0, 1, 0, 0]}


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (1, 1), (3, 5), (7, 10), (12, 20), (21, 25), (250, 250), (999, 1000), (0.3, 0.5)],
)
def test_nice_ceiling(value, ceiling):
    """The chart's top is the next round number at or above the peak."""
    assert svgchart.nice_ceiling(value) == ceiling


def test_points_scale_values_into_the_plot():
    """0 sits on the bottom edge, the top value on the top edge, x spreads evenly."""
    assert svgchart.points([0, 5, 10], width=100, height=50, top=10) == "0.0,50.0 50.0,25.0 100.0,0.0"
