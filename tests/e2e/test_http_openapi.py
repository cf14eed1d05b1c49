"""The OpenAPI description holds: a property-based run (schemathesis) against a real ``serve`` finds no
5xx and no answer outside the schema, on every operation, with a bounded number of examples each.

The requests are made with the admin token, so that the operator routes are exercised past their
401; ``POST /events`` is sent generated bodies in each declared content mode.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import httpx
import hypothesis
import pytest
import redis
import schemathesis
from conftest import _admin, _fresh_database, pg_database_url
from httpserve import ServeProcess, sha256
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import process_env

from worker.runtime.tracking import tracking_keys

pytestmark = pytest.mark.e2e

ADMIN = secrets.token_urlsafe(16)
QUEUE = f"ew-test:openapi-{secrets.token_hex(4)}"
#: Examples per operation: enough to reach each content mode and the error paths, in about a minute.
EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def serve(pg_template, tmp_path_factory) -> Iterator[ServeProcess]:
    """One serve for the module's operations, on a database of its own."""
    database = asyncio.run(_fresh_database(pg_template))
    env = process_env(
        DATABASE_URL=pg_database_url(database),
        REDIS_URL="redis://127.0.0.1:6379/15",
        EVENTWORKER_QUEUE_NAME=QUEUE,
        EVENTWORKER_ADMIN_TOKEN_SHA256=sha256(ADMIN),
    )
    process = ServeProcess(env, tmp_path_factory.mktemp("openapi") / "serve.log")
    try:
        yield process
        reached = {
            line.split('route="')[1].split('"')[0]
            for line in httpx.get(process.url + "/metrics").text.splitlines()
            if line.startswith("eventworker_http_requests_total{")
        }
        # Every operation was called (the schema itself and the metrics scrape aside).
        assert reached >= set(httpx.get(process.url + "/openapi.json").json()["paths"]), reached
    finally:
        status = process.stop()
        client = redis.Redis.from_url("redis://127.0.0.1:6379/15")
        jobs = [b"arq:job:" + job_id for job_id in client.zrange(QUEUE, 0, -1)]
        client.delete(QUEUE, *jobs, *tracking_keys(QUEUE))
        client.close()
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        assert status == 0, process.output()


@pytest.fixture(scope="module")
def api_schema(serve):
    return schemathesis.openapi.from_url(serve.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_no_server_error_and_no_answer_outside_the_schema(case):
    """Every generated request gets an answer the schema describes, and none is a 5xx."""
    case.call_and_validate(headers={"authorization": f"Bearer {ADMIN}"}, checks=CHECKS, timeout=30)


def test_the_events_endpoint_is_described_in_all_three_modes(serve):
    """Structured, batched and binary bodies, the ce- headers, and every answer the endpoint gives."""
    document = httpx.get(serve.url + "/openapi.json").json()
    post = document["paths"]["/events"]["post"]
    assert set(post["requestBody"]["content"]) == {
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "application/json",
        "application/octet-stream",
    }
    assert {p["name"] for p in post["parameters"]} >= {"ce-specversion", "ce-id", "ce-source", "ce-type"}
    assert set(post["responses"]) == {"202", "207", "400", "401", "403", "408", "413", "415", "429", "503"}
    problem = post["responses"]["400"]["content"]["application/problem+json"]["schema"]
    assert problem["required"] == ["type", "title", "status", "detail"]
