"""CloudEvents over HTTP as producers send them: the official SDK, curl-like clients, and hostile ones.

A real ``eventworker serve`` (its own process, a producers file with two producers) takes
events in the three content modes; a real worker stores them; ``eventworker export`` gives them
back, and they are what the SDK sent. Then every way a request can be wrong gets its status code,
and nothing is stored that should not be: no token, a wrong token, another producer's source, an
oversized body, a batch of 100,000 tiny events, a client sending its body one byte a second.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from conftest import pg_database_url
from httpserve import ServeProcess, producers_file
from support import process_env, run_worker

from worker.config import Settings, load_settings
from worker.db.engine import Database
from worker.db.sql import statements

pytestmark = pytest.mark.e2e

STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}


@pytest.fixture
def tokens(tmp_path) -> dict[str, str]:
    return producers_file(tmp_path / "producers.json", {"shop": ["/shop/"], "billing": ["/billing/"]})


@pytest.fixture
def env(pg_database, redis_url, queue_name, tmp_path, tokens) -> dict[str, str]:
    return process_env(
        DATABASE_URL=pg_database_url(pg_database),
        REDIS_URL=redis_url,
        EVENTWORKER_QUEUE_NAME=queue_name,
        EVENTWORKER_PRODUCERS_FILE=str(tmp_path / "producers.json"),
        EVENTWORKER_HTTP_MAX_BODY_BYTES="2000000",
        EVENTWORKER_HTTP_BODY_TIMEOUT="2",
    )


@pytest.fixture
def settings(env) -> Settings:
    return load_settings(
        database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"], queue_name=env["EVENTWORKER_QUEUE_NAME"]
    )


@pytest.fixture
def serve(env, tmp_path):
    process = ServeProcess(env, tmp_path / "serve.log")
    try:
        yield process
    finally:
        assert process.stop() == 0, process.output()


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def post(url: str, **options: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(url, **options)


async def send(url: str, message: ce_http.HTTPMessage, token: str) -> httpx.Response:
    return await post(url + "/events", content=message.body, headers={**message.headers, **auth(token)})


def exported(env: dict[str, str], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Every stored event, as `eventworker export` writes it, by id (without eventworker's own attributes)."""
    target = tmp_path / "export.ndjson"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "export", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    events = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    return {e["id"]: {k: v for k, v in e.items() if not k.startswith("ew")} for e in events}


def as_json(event: CloudEvent) -> dict[str, Any]:
    """What the SDK itself writes for ``event`` in the JSON format."""
    return orjson.loads(JSONFormat().write(event))


def same_event(stored: dict[str, Any], sent: dict[str, Any]) -> None:
    """Attribute by attribute; times compared as instants (RFC 3339 has several spellings of one)."""
    assert datetime.fromisoformat(stored.pop("time")) == datetime.fromisoformat(sent.pop("time"))
    assert stored == sent


async def test_events_from_the_official_sdk_arrive_exactly_as_sent(serve, env, settings, tokens, tmp_path):
    """Binary and structured mode, non-ASCII and % in headers, data_base64, extensions, a batch."""
    shop = tokens["shop"]
    when = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    binary_json = CloudEvent(
        {
            "id": 'café-100%-"quoted" ü',
            "source": "/shop/zürich",
            "type": "com.example.order.created",
            "subject": "commande n° 7 ✓",
            "time": when,
            "datacontenttype": "application/json",
            "tenant": "東京",
        },
        {"total": 12.5, "items": ["ä", {"n": 1}]},
    )
    binary_bytes = CloudEvent(
        {
            "id": "bytes-1",
            "source": "/shop/files",
            "type": "t.bytes",
            "time": when,
            "datacontenttype": "application/octet-stream",
        },
        bytes(range(256)),
    )
    binary_text = CloudEvent(
        {
            "id": "text-1",
            "source": "/shop/notes",
            "type": "t.text",
            "time": when,
            "datacontenttype": "text/plain; charset=utf-8",
        },
        "héllo wörld",
    )
    structured_b64 = CloudEvent(
        {
            "id": "b64-1",
            "source": "/shop/blobs",
            "type": "t.blob",
            "time": when,
            "count": 3,
            "flag": True,
            "ratio": 0.25,
        },
        b"\x00\xffbinary",
    )
    for message in (ce_http.to_binary_event(e) for e in (binary_json, binary_bytes, binary_text)):
        response = await send(serve.url, message, shop)
        assert response.status_code == 202, response.text
    response = await send(serve.url, ce_http.to_structured_event(structured_b64), shop)
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/json"

    batch = [
        CloudEvent({"id": f"batch-{n}", "source": "/shop/batch", "type": "t", "time": when}, {"n": n})
        for n in range(3)
    ]
    bodies = [as_json(e) for e in batch]
    bodies.insert(1, {"specversion": "1.0", "id": "bad-1", "source": "/shop/batch"})  # no type
    bodies.append({"specversion": "1.0", "id": "bad-2", "source": "/shop/batch", "type": "t", "time": 17})
    response = await post(
        serve.url + "/events", content=orjson.dumps(bodies), headers={**BATCH, **auth(shop)}
    )
    assert response.status_code == 207, response.text
    outcome = response.json()
    assert (outcome["accepted"], outcome["rejected"]) == (3, 2)
    assert [e["status"] for e in outcome["events"]] == [202, 400, 202, 202, 400]
    assert outcome["events"][1]["errors"] == [{"loc": "type", "msg": "Field required", "type": "missing"}]
    assert outcome["events"][4]["id"] == "bad-2"

    await run_worker(settings)
    stored = exported(env, tmp_path)
    assert len(stored) == 4 + 3
    for event in (binary_json, binary_bytes, binary_text, structured_b64, *batch):
        same_event(stored[event.get_id()], as_json(event))
    assert stored["bytes-1"]["data_base64"] == base64.b64encode(bytes(range(256))).decode()
    assert stored["b64-1"]["count"] == 3
    assert stored["b64-1"]["flag"] is True

    db = Database.from_settings(settings)
    try:
        async with db.transaction() as session:
            dead = await statements.dead_letters(session)
    finally:
        await db.dispose()
    assert sorted((d.event_id, d.reason, d.job_name, d.position) for d in dead) == [
        ("bad-1", "invalid", "http:shop", 1),
        ("bad-2", "invalid", "http:shop", 4),
    ]


async def _counts(settings: Settings) -> tuple[int, dict[str, int]]:
    client = aioredis.from_url(settings.redis_url)
    try:
        queued = await client.zcard(settings.queue_name)
    finally:
        await client.aclose()
    db = Database.from_settings(settings)
    try:
        async with db.transaction() as session:
            return queued, await statements.table_counts(session)
    finally:
        await db.dispose()


def slow_body(url: str, token: str, delay: float = 1.0) -> tuple[str, float]:
    """Send a request's body one byte per ``delay`` seconds; the status line received, and after how long."""
    host, port = url.removeprefix("http://").split(":")
    body = b'{"specversion":"1.0","id":"slow","source":"/shop/slow","type":"t"}'
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        answer = b""
        for byte in body:
            try:
                connection.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            connection.settimeout(delay)
            try:
                answer += connection.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        connection.settimeout(10)
        while True:  # read to the end: the server must close the connection
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode(), time.monotonic() - started


async def test_every_wrong_request_gets_its_status_and_stores_nothing(serve, settings, tokens):
    """401, 401, 403, 413, 413, 408, 415, 400: the queue and the tables stay empty throughout."""
    event = {"specversion": "1.0", "id": "e-1", "source": "/shop/orders", "type": "t"}
    body = orjson.dumps(event)
    url = serve.url + "/events"
    checks = [
        ("no token", {}, body, STRUCTURED, 401),
        ("a wrong token", auth("not-a-token"), body, STRUCTURED, 401),
        ("not a bearer token", {"authorization": "Basic eDp5"}, body, STRUCTURED, 401),
        ("another producer's source", auth(tokens["billing"]), body, STRUCTURED, 403),
        ("an oversized body", auth(tokens["shop"]), b"[" + b" " * 2_000_000 + b"]", BATCH, 413),
        (
            "another event format",
            auth(tokens["shop"]),
            b"\x00",
            {"content-type": "application/cloudevents+avro"},
            415,
        ),
    ]
    for what, headers, content, kind, status in checks:
        response = await post(url, content=content, headers={**kind, **headers}, timeout=30)
        assert response.status_code == status, (what, response.text)
        assert response.headers["content-type"] == "application/problem+json", what
        problem = response.json()
        assert problem["status"] == status, what
        assert problem["type"].startswith("urn:eventworker:problem:"), what
    assert "WWW-Authenticate" in (await post(url, content=body, headers=STRUCTURED)).headers
    forged = (await post(url, content=body, headers={**STRUCTURED, **auth(tokens["billing"])})).json()
    assert forged["errors"] == [{"index": 0, "source": "/shop/orders"}]

    tiny = [{"specversion": "1.0", "id": str(n), "source": "/shop/t", "type": "t"} for n in range(100_000)]
    many = orjson.dumps(tiny)
    assert len(many) < 8_000_000
    response = await post(url, content=many, headers={**BATCH, **auth(tokens["shop"])}, timeout=60)
    assert response.status_code == 413, response.text  # over the body limit here (2 MB)
    status = "HTTP/1.1 408 Request Timeout"
    line, took = await asyncio.to_thread(slow_body, serve.url, tokens["shop"])
    assert line == status
    assert 1.5 < took < 6

    unreadable = await post(url, content=b"{not json", headers={**STRUCTURED, **auth(tokens["billing"])})
    assert unreadable.status_code == 400
    assert await _counts(settings) == (0, {"events": 0, "dead_letters": 1, "failed_jobs": 0})  # that last one


async def test_a_batch_over_the_event_count_limit_is_refused_whole(env, tmp_path, settings, tokens):
    """100,000 tiny events under a body limit that admits them: 413 for the count, nothing queued."""
    process = ServeProcess({**env, "EVENTWORKER_HTTP_MAX_BODY_BYTES": "16000000"}, tmp_path / "serve-big.log")
    try:
        tiny = [
            {"specversion": "1.0", "id": str(n), "source": "/shop/t", "type": "t"} for n in range(100_000)
        ]
        response = await post(
            process.url + "/events",
            content=orjson.dumps(tiny),
            headers={**BATCH, **auth(tokens["shop"])},
            timeout=60,
        )
        assert response.status_code == 413, response.text
        assert response.json()["limit"] == 10_000
        assert "100000 events in one batch" in response.json()["detail"]
    finally:
        assert process.stop() == 0
    assert await _counts(settings) == (0, {"events": 0, "dead_letters": 0, "failed_jobs": 0})


async def test_without_a_producers_file_invalid_events_are_answered_but_not_kept(env, tmp_path):
    """Anyone on loopback may send; an invalid event gets 400 and no dead letter (nobody fills the table)."""
    open_env = {k: v for k, v in env.items() if k != "EVENTWORKER_PRODUCERS_FILE"}
    process = ServeProcess(open_env, tmp_path / "serve-open.log")
    try:
        response = await post(process.url + "/events", content=b'{"id": "x"}', headers=STRUCTURED)
        assert response.status_code == 400
        assert [e["loc"] for e in response.json()["errors"][0]["errors"]] == ["specversion", "source", "type"]
    finally:
        assert process.stop() == 0
    settings = load_settings(database_url=env["DATABASE_URL"])
    assert (await _table_counts(settings))["dead_letters"] == 0


async def _table_counts(settings: Settings) -> dict[str, int]:
    db = Database.from_settings(settings)
    try:
        async with db.transaction() as session:
            return await statements.table_counts(session)
    finally:
        await db.dispose()
