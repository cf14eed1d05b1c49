"""The operator API as an operator's script uses it: tokens, pages, requeue, retry, re-drive, reports;
the probes; the HTTP side's metrics."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from conftest import _admin, _fresh_database, pg_database_url
from httpserve import ServeProcess, sha256
from prometheus_client.parser import text_string_to_metric_families
from support import process_env, run_worker

from worker.config import Settings, load_settings
from worker.db.engine import Database
from worker.db.models import Event, HandlerRun
from worker.db.sql import statements
from worker.protocol.events import Rejection
from worker.protocol.producer import EventProducer

pytestmark = pytest.mark.e2e

ADMIN = secrets.token_urlsafe(16)
READER = secrets.token_urlsafe(16)


@pytest.fixture
def env(pg_database, redis_url, queue_name) -> dict[str, str]:
    return process_env(
        DATABASE_URL=pg_database_url(pg_database),
        REDIS_URL=redis_url,
        EVENTWORKER_QUEUE_NAME=queue_name,
        EVENTWORKER_ADMIN_TOKEN_SHA256=sha256(ADMIN),
        EVENTWORKER_READER_TOKEN_SHA256=sha256(READER),
    )


@pytest.fixture
def settings(env) -> Settings:
    return load_settings(
        database_url=env["DATABASE_URL"],
        redis_url=env["REDIS_URL"],
        queue_name=env["EVENTWORKER_QUEUE_NAME"],
        max_tries=1,
        max_event_bytes=300,
    )


@pytest.fixture
def serve(env, tmp_path):
    process = ServeProcess(env, tmp_path / "serve.log")
    try:
        yield process
    finally:
        assert process.stop() == 0, process.output()


@pytest.fixture
async def api(serve):
    async with httpx.AsyncClient(base_url=serve.url + "/api", timeout=30) as client:
        yield client


def as_(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def seeded(settings: Settings) -> None:
    """Five invalid events, one too large, one good; a job that fails for good; a failed handler run."""
    events: list[Any] = [{"specversion": "1.0", "id": f"bad-{n}", "source": "/ops"} for n in range(5)]
    events.append({"specversion": "1.0", "id": "big", "source": "/ops", "type": "t", "data": "x" * 400})
    events.append({"specversion": "1.0", "id": "good", "source": "/ops", "type": "t"})
    async with EventProducer(settings.redis_url, queue_name=settings.queue_name) as producer:
        await producer.emit_batch(events)
        await producer.redis.enqueue_job(
            "rebuild_rollups", "surplus argument", _queue_name=settings.queue_name
        )
    await run_worker(settings)
    db = Database.from_settings(settings)
    now = datetime.now(UTC)
    try:
        async with db.transaction() as session:
            [seq] = (await session.execute(Event.__table__.select().with_only_columns(Event.seq))).scalars()
            session.add(
                HandlerRun(
                    event_seq=seq,
                    handler="audit",
                    status="failed",
                    tries=5,
                    last_error="boom",
                    created_at=now,
                    updated_at=now,
                )
            )
    finally:
        await db.dispose()


async def test_reads_need_an_operator_token_and_actions_the_admin_one(api, settings, env):
    """No token 401; the read-only token reads and gets 403 for actions; the admin token acts."""
    await seeded(settings)
    assert (await api.get("/status")).status_code == 401
    assert (await api.get("/status", headers=as_("nope"))).status_code == 401
    status = (await api.get("/status", headers=as_(READER))).json()
    assert status["queue"]["name"] == settings.queue_name
    assert status["failed_by_job"] == {"rebuild_rollups": 1}
    assert status["dead_letters_by_reason"] == {"invalid": 5, "too_large": 1}

    failed = (await api.get("/failed-jobs", headers=as_(READER))).json()["items"]
    assert [(f["job"], f["requeued_as"]) for f in failed] == [("rebuild_rollups", None)]
    denied = await api.post(f"/failed-jobs/{failed[0]['id']}/requeue", headers=as_(READER))
    assert denied.status_code == 403
    assert denied.headers["content-type"] == "application/problem+json"
    done = await api.post(f"/failed-jobs/{failed[0]['id']}/requeue", headers=as_(ADMIN))
    assert done.status_code == 200, done.text
    assert done.json()["job"] == "rebuild_rollups"
    again = await api.post(f"/failed-jobs/{failed[0]['id']}/requeue", headers=as_(ADMIN))
    assert again.status_code == 409
    assert (await api.post("/failed-jobs/999999/requeue", headers=as_(ADMIN))).status_code == 404
    # An id past 64 bits is a 422, not the database's overflow as a 500 (schemathesis found that one).
    huge = await api.post("/failed-jobs/135535079786566442287104/requeue", headers=as_(ADMIN))
    assert huge.status_code == 422
    assert huge.headers["content-type"] == "application/problem+json"
    assert (await api.get("/failed-jobs", headers=as_(READER))).json()["items"] == []
    everything = (await api.get("/failed-jobs?include_requeued=true", headers=as_(READER))).json()["items"]
    assert everything[0]["requeued_as"] == done.json()["job_id"]


async def test_dead_letters_page_by_key_filter_by_reason_and_re_drive(api, settings):
    """Pages of 2 chain through next; a too-large event re-driven once the limit is raised is stored."""
    await seeded(settings)
    seen: list[int] = []
    url = "/dead-letters?limit=2"
    while url:
        page = (await api.get(url, headers=as_(READER))).json()
        seen += [row["id"] for row in page["items"]]
        url = f"/dead-letters?limit=2&before={page['next']}" if page["next"] else ""
    assert len(seen) == 6
    assert seen == sorted(seen, reverse=True)
    [big] = (await api.get("/dead-letters?reason=too_large", headers=as_(READER))).json()["items"]
    assert big["event_id"] == "big"
    whole = (await api.get(f"/dead-letters/{big['id']}", headers=as_(READER))).json()
    assert len(whole["raw"]) > 400
    invalid = (await api.get("/dead-letters?reason=invalid&limit=1", headers=as_(READER))).json()["items"][0]
    assert invalid["errors"][0]["loc"] == "type"
    redriven = await api.post(f"/dead-letters/{big['id']}/redrive", headers=as_(ADMIN))
    assert redriven.status_code == 200, redriven.text
    assert (await api.get(f"/dead-letters/{big['id']}", headers=as_(READER))).status_code == 404
    await run_worker(settings.model_copy(update={"max_event_bytes": 1_000_000}))
    stats = (await api.get("/stats?window=1h", headers=as_(READER))).json()
    assert stats["events"] == 2  # "good", and "big" re-driven
    bad_window = await api.get("/stats?window=forever", headers=as_(READER))
    assert bad_window.status_code == 422
    assert "window" in bad_window.json()["detail"]


async def test_handler_runs_are_listed_and_retried(api, settings):
    """A failed run: listed with its error, retried (pending again), then 409 (no longer failed), 404."""
    await seeded(settings)
    [run] = (await api.get("/handler-runs?status=failed", headers=as_(READER))).json()["items"]
    assert (run["handler"], run["last_error"], run["event_id"]) == ("audit", "boom", "good")
    retried = await api.post(f"/handler-runs/{run['id']}/retry", headers=as_(ADMIN))
    assert retried.status_code == 200, retried.text
    assert retried.json()["runs"] == [run["id"]]
    assert (await api.get("/handler-runs?status=failed", headers=as_(READER))).json()["items"] == []
    assert (await api.post(f"/handler-runs/{run['id']}/retry", headers=as_(ADMIN))).status_code == 409
    assert (await api.post("/handler-runs/424242/retry", headers=as_(ADMIN))).status_code == 404
    assert (await api.get("/handler-runs?status=bogus", headers=as_(READER))).status_code == 422
    verify = (await api.get("/rollups/verify", headers=as_(READER))).json()
    assert verify["matches"] is True


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url + "/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_probes_and_metrics(serve, env, tmp_path):
    """/healthz and /readyz answer; requests are counted by route template and status, and timed."""
    assert httpx.get(serve.url + "/healthz").json() == {"status": "alive"}
    assert httpx.get(serve.url + "/readyz").json() == {"status": "ready"}
    for _ in range(3):
        httpx.get(serve.url + "/api/failed-jobs/1/requeue")  # 405: a POST route
    httpx.get(serve.url + "/api/status")
    httpx.get(serve.url + "/no/such/page")
    httpx.post(serve.url + "/events", content=b"{}", headers={"content-type": "application/cloudevents+json"})
    samples = scrape(serve.url)

    def count(route: str, method: str, status: str) -> float:
        labels = frozenset({"route": route, "method": method, "status": status}.items())
        return samples.get(("eventworker_http_requests_total", labels), 0)

    assert count("/api/status", "GET", "401") == 1
    assert count("/readyz", "GET", "200") == 1
    assert count("unmatched", "GET", "404") == 1
    assert count("/events", "POST", "400") == 1
    assert (
        samples[
            (
                "eventworker_http_events_total",
                frozenset({"producer": "anonymous", "outcome": "rejected"}.items()),
            )
        ]
        == 1
    )
    timed = frozenset({"route": "/healthz", "method": "GET"}.items())
    assert samples[("eventworker_http_request_duration_seconds_count", timed)] == 1

    down = ServeProcess({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, tmp_path / "down.log")
    try:
        assert httpx.get(down.url + "/healthz").status_code == 200
        ready = httpx.get(down.url + "/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["detail"].startswith("redis: ")
        assert ready.headers["retry-after"] == "5"
    finally:
        assert down.stop() == 0


@pytest.fixture
async def read_database(pg_template) -> AsyncIterator[str]:
    """A second database standing in for DATABASE_READ_URL (not a standby: the router reads it as one
    that keeps up); tests/integration/test_read_replica.py drills a real streaming replica."""
    name = await _fresh_database(pg_template)
    yield pg_database_url(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_with_a_read_url_the_api_reads_there_and_acts_on_the_primary(env, tmp_path, read_database):
    """Lists and reports come from DATABASE_READ_URL; an action (re-drive) finds only the primary's rows."""
    reads = load_settings(database_url=read_database)
    db = Database.from_settings(reads)
    rejection = Rejection(b'{"id": "only-on-the-replica"}', "invalid", [{"loc": "", "msg": "x", "type": "x"}])
    try:
        async with db.transaction() as session:
            row = statements.dead_letter_row(rejection, 0, "job-r", "http:test", datetime.now(UTC))
            await statements.insert_dead_letters(session, [row])
    finally:
        await db.dispose()
    serve = ServeProcess({**env, "DATABASE_READ_URL": read_database}, tmp_path / "serve-read.log")
    try:
        async with httpx.AsyncClient(base_url=serve.url + "/api", timeout=30) as api:
            [letter] = (await api.get("/dead-letters", headers=as_(READER))).json()["items"]
            assert letter["raw"] == '{"id": "only-on-the-replica"}'
            redrive = await api.post(f"/dead-letters/{letter['id']}/redrive", headers=as_(ADMIN))
            assert redrive.status_code == 404  # the primary has no such row
            stats = (await api.get("/stats?window=1h", headers=as_(READER))).json()
            assert stats["dead_letters_by_reason"] == [{"reason": "invalid", "count": 1}]
    finally:
        assert serve.stop() == 0
