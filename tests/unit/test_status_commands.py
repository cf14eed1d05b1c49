"""`eventworker status`, `health` and `check` on SQLite and the in-process Redis: output and exit codes."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from click.testing import CliRunner

from worker.commands.cli import main
from worker.protocol.redis import memory_pool
from worker.runtime import tracking
from worker.runtime.tracking import WorkerBeat


@pytest.fixture
def env(database_path) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite+aiosqlite:///{database_path}",
        "REDIS_URL": "memory://",
        "EVENTWORKER_QUEUE_NAME": f"q-{uuid.uuid4().hex[:8]}",
        "EVENTWORKER_HEALTH_CHECK_INTERVAL": "10",
    }


def beat_here(queue: str, age_s: float) -> WorkerBeat:
    """Write a heartbeat of a worker on this host, ``age_s`` old, into the in-process Redis."""
    now = datetime.now(UTC)
    beat = WorkerBeat(
        f"{socket.gethostname()}:4242", socket.gethostname(), 4242, now, now - timedelta(seconds=age_s), 10, 0
    )

    async def write() -> None:
        redis = memory_pool()
        try:
            await tracking.write_heartbeat(redis, queue, beat)
        finally:
            await redis.aclose()

    asyncio.run(write())
    return beat


def invoke(env: dict[str, str], *args: str):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize("command", ["health", "check"])
def test_health_without_a_worker_exits_1_naming_the_queue(env, command):
    """No heartbeat: exit 1, the problem on stderr; the database itself is fine."""
    result = invoke(env, command)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"unhealthy: no worker heartbeat in Redis for queue {env['EVENTWORKER_QUEUE_NAME']}"
        " (written every 10s by a running worker)"
    ]


@pytest.mark.parametrize("args", [[], ["--local"], ["--worker-id", f"{socket.gethostname()}:4242"]])
def test_health_with_a_fresh_heartbeat_exits_0(env, args):
    """A fresh heartbeat passes, whichever way it is asked for."""
    beat_here(env["EVENTWORKER_QUEUE_NAME"], age_s=1)
    result = invoke(env, "health", *args)
    assert (result.exit_code, result.stdout) == (0, "healthy\n")


def test_health_with_a_stale_heartbeat_exits_1(env):
    """A worker silent for three intervals is named as stale."""
    beat = beat_here(env["EVENTWORKER_QUEUE_NAME"], age_s=45)
    result = invoke(env, "check", "--local")
    assert result.exit_code == 1
    assert result.stderr == f"unhealthy: worker {beat.worker_id}: last heartbeat 45s ago (stale after 30s)\n"


def test_health_exit_code_2_on_bad_configuration_or_usage(env):
    """A bad setting or contradictory options exit 2, as every command's configuration errors do."""
    bad = invoke({**env, "DATABASE_URL": "postgresql+psycopg2://u@h/db"}, "health")
    assert bad.exit_code == 2
    assert bad.stderr.startswith("eventworker: configuration error: DATABASE_URL:")
    assert invoke(env, "health", "--local", "--worker-id", "a:1").exit_code == 2


def test_status_json_shows_the_queue_and_the_verdict(env):
    """`status --json` prints every section; with no worker alive that is the problem it names."""
    beat_here(env["EVENTWORKER_QUEUE_NAME"], age_s=100)
    result = invoke(env, "status", "--json")
    assert result.exit_code == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert data["queue"]["waiting"] == 0
    assert [w["stale"] for w in data["workers"]] == [True]
    assert data["problems"][0] == f"no live worker on queue {env['EVENTWORKER_QUEUE_NAME']}"
    assert data["rollups"] == {
        "position": None,
        "updated_at": None,
        "events": 0,
        "last_counted_at": None,
        "capped": False,
    }
    text = invoke(env, "status")
    assert text.exit_code == 0
    assert text.stdout.splitlines()[0].endswith("UTC: PROBLEMS")
