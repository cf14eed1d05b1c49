"""`status` and the dashboard's data on every real database, and the dashboard's HTTP server.

The story: a worker stores events (some invalid) and fails a job for good; status then shows
the dead letters by reason, the failed job with its error, every event past the rollup
checkpoint, and after a rollup run none past it and a chart of events per minute by type.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from conftest import BACKENDS, PARTITIONED_BACKENDS
from support import catch_up_rollups, enqueue, event, run_worker, unique_source

from worker.ops.status import gather_status
from worker.protocol.producer import EventProducer

pytestmark = pytest.mark.integration


@pytest.fixture(params=(*BACKENDS, *PARTITIONED_BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """Every driver, and PostgreSQL with events partitioned by day."""
    return str(request.param)


async def seed(settings) -> datetime:
    """Five valid events a minute apart (two types), one invalid, and a job that fails on its one try."""
    now = datetime.now(UTC)
    source = unique_source()
    events = [
        event(
            n,
            source=source,
            type=f"com.example.{'paid' if n % 2 else 'created'}",
            time=(now - timedelta(minutes=n)).isoformat(),
        )
        for n in range(5)
    ]
    await enqueue(settings, [[*events, {"specversion": "1.0", "id": "no-source", "type": "t"}]])
    async with EventProducer(settings.redis_url, queue_name=settings.queue_name) as producer:
        await producer.redis.enqueue_job(
            "rebuild_rollups", "surplus argument", _queue_name=settings.queue_name
        )
    await run_worker(settings)
    return now


async def test_status_shows_failures_dead_letters_rollup_lag_and_the_chart(settings):
    """Each section reads what the worker left, in separate transactions, on every database."""
    settings = settings.model_copy(update={"max_tries": 1, "rollup_settle_seconds": 0.0})
    now = await seed(settings)

    before = await gather_status(settings)
    assert before.errors == {}
    assert before.dead_letters_by_reason == {"invalid": 1}
    [dead] = before.recent_dead_letters
    assert '"no-source"' in dead.raw
    assert any("source" in str(error.get("loc")) for error in dead.errors)
    assert before.failed_by_job == {"rebuild_rollups": 1}
    [failure] = before.recent_failures
    assert failure.job == "rebuild_rollups"
    assert "TypeError" in failure.error
    assert before.rollups is not None
    assert (before.rollups.position, before.rollups.events) == (None, 5)
    assert before.chart == []
    assert before.workers == []  # the burst worker stopped cleanly and took its record with it
    assert before.running == []
    assert before.queue is not None
    assert before.queue.in_progress == 0  # (a cron tick may wait in the queue: arq enqueues it early)
    assert [cron.job for cron in before.cron][:1] == ["update_rollups"]

    await catch_up_rollups(settings)
    after = await gather_status(settings, now=now + timedelta(seconds=1))
    assert after.rollups is not None
    assert after.rollups.position is not None
    assert after.rollups.events == 0
    per_type: dict[str, int] = {}
    for point in after.chart:
        per_type[point.type] = per_type.get(point.type, 0) + point.events
    assert per_type == {"com.example.created": 3, "com.example.paid": 2}


async def test_status_reports_an_unreachable_database_per_section(pg_settings):
    """With the database down, its sections say why (without the password) and Redis's still show."""
    url = "postgresql+asyncpg://postgres:S3cret-pw@127.0.0.1:1/nowhere"
    status = await gather_status(pg_settings.model_copy(update={"database_url": url}))
    assert set(status.errors) == {"failed jobs", "dead letters", "handler runs", "rollups", "chart"}
    assert all("S3cret-pw" not in error for error in status.errors.values())
    assert status.queue is not None


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def test_the_dashboard_serves_the_page_and_json_read_only(pg_settings):
    """Without operator tokens, GET / is the page under a strict policy and /status.json the JSON, with no
    sign-in and no action; other paths 404, a POST to the page 405."""
    from httpserve import InThreadServer

    await seed(pg_settings.model_copy(update={"max_tries": 1}))
    server = await asyncio.to_thread(InThreadServer, pg_settings.model_copy(update={"dashboard_refresh": 5}))
    base = server.url
    try:
        code, headers, body = await asyncio.to_thread(_get, base + "/")
        assert code == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["content-security-policy"].startswith("default-src 'none'; style-src 'nonce-")
        assert headers["x-content-type-options"] == "nosniff"
        page = body.decode()
        assert '<meta http-equiv="refresh" content="5">' in page
        assert '<b id="tile-failed">1</b>' in page
        assert "<form" not in page  # read-only: no action without an admin signed in
        code, headers, body = await asyncio.to_thread(_get, base + "/status.json")
        assert (code, headers["content-type"]) == (200, "application/json")
        data = orjson.loads(body)
        assert data["failed_by_job"] == {"rebuild_rollups": 1}
        assert data["queue_name"] == pg_settings.queue_name
        assert (await asyncio.to_thread(_get, base + "/etc/passwd"))[0] == 404
        assert (await asyncio.to_thread(_get, base + "/", "POST"))[0] == 405
    finally:
        await asyncio.to_thread(server.stop)
