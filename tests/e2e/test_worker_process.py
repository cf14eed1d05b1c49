"""Real worker processes, a real producer command, real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import pg_database_url
from support import WorkerProcess, connection_names, count, event, process_env

from worker.config import load_settings
from worker.db.engine import Database
from worker.db.models import DeadLetter, Event
from worker.db.schema import head_revision

pytestmark = pytest.mark.e2e

PASSWORD = "e2e-S3cret-pw"  # trust auth accepts it; it must never be printed


@pytest.fixture
def worker_env(pg_database, redis_url, queue_name) -> dict[str, str]:
    return process_env(
        DATABASE_URL=pg_database_url(pg_database, password=PASSWORD),
        REDIS_URL=redis_url,
        EVENTWORKER_QUEUE_NAME=queue_name,
        EVENTWORKER_APPLICATION_NAME=f"ew-e2e-{uuid.uuid4().hex[:8]}",
        EVENTWORKER_POLL_DELAY="0.01",
    )


@pytest.fixture
def start_worker(worker_env, tmp_path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(**extra: str) -> WorkerProcess:
        process = WorkerProcess({**worker_env, **extra}, tmp_path / f"worker-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


async def _wait_for(db: Database, model, expected: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while (n := await count(db, model)) != expected:
        assert time.monotonic() < deadline, f"{model.__tablename__}: {n} rows, expected {expected}"
        await asyncio.sleep(0.05)


def _enqueue_file(env: dict[str, str], path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "enqueue", str(path), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_worker_process_ingests_what_the_producer_command_sends(worker_env, start_worker, tmp_path):
    """Events from `eventworker enqueue` are stored once, bad lines kept; SIGTERM stops the worker cleanly."""
    worker = start_worker()
    worker.wait_started()
    lines = [orjson.dumps(event(i)) for i in range(1000)] + [orjson.dumps(event(7))]
    lines += [orjson.dumps({"specversion": "1.0", "id": "x"}), b"{not json"]
    (tmp_path / "events.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    sent = _enqueue_file(worker_env, tmp_path / "events.ndjson", "--batch-size", "100")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == (
        "read 1,003 lines: sent 1,003 events in 11 jobs, of which 1 is not JSON and will be a dead letter;"
        " skipped 0 blank lines\n"
    )
    assert "line 1003: not JSON" in sent.stderr

    db = Database.from_settings(load_settings(database_url=worker_env["DATABASE_URL"]))
    try:
        await _wait_for(db, Event, 1000)
        await _wait_for(db, DeadLetter, 2)
        name = worker_env["EVENTWORKER_APPLICATION_NAME"]
        assert name in await connection_names(db, f"%{name}")
        assert worker.stop() == 0
        assert await connection_names(db, f"%{name}") == []
    finally:
        await db.dispose()

    output = worker.output()
    assert PASSWORD not in output
    assert PASSWORD not in sent.stdout + sent.stderr
    stored = [orjson.loads(line) for line in output.splitlines() if '"ingest.stored"' in line]
    assert sum(line["accepted"] for line in stored) == 1000
    assert sum(line["duplicates"] for line in stored) == 1
    for line in stored:
        assert line["job_name"] == "ingest_events"
        assert line["job_try"] == 1
        assert line["job_id"]
        assert line["worker_id"].endswith(f":{worker.process.pid}")


async def test_two_worker_processes_store_each_event_once(worker_env, start_worker, tmp_path):
    """Two workers consuming overlapping batches at once store every identity exactly once."""
    workers = [start_worker(), start_worker()]
    for worker in workers:
        worker.wait_started()
    lines = []
    for batch in range(40):
        lines += [orjson.dumps(event(i)) for i in range(batch * 25, batch * 25 + 100)]
    (tmp_path / "events.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    assert _enqueue_file(worker_env, tmp_path / "events.ndjson", "--batch-size", "50").returncode == 0
    db = Database.from_settings(load_settings(database_url=worker_env["DATABASE_URL"]))
    try:
        await _wait_for(db, Event, 39 * 25 + 100)
        for worker in workers:
            assert worker.stop() == 0
        assert await count(db, Event) == 39 * 25 + 100
    finally:
        await db.dispose()
    stored = [
        orjson.loads(line)
        for worker in workers
        for line in worker.output().splitlines()
        if "ingest.stored" in line
    ]
    assert {line["worker_id"] for line in stored} == {
        f"{os.uname().nodename}:{w.process.pid}" for w in workers
    }
    assert sum(line["accepted"] for line in stored) == 39 * 25 + 100
    assert sum(line["accepted"] + line["duplicates"] for line in stored) == len(lines)


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("postgresql+psycopg2://u:pw-secret-1@127.0.0.1/test", "postgresql+asyncpg://"),
        ("mysql+pymysql://u:pw-secret-1@127.0.0.1/test", "mysql+aiomysql://"),
        ("sqlite:///events.db", "sqlite+aiosqlite://"),
    ],
)
@pytest.mark.parametrize("command", [["-m", "worker", "run"], ["-m", "arq", "worker.main.WorkerSettings"]])
def test_a_sync_driver_url_is_refused_at_start_up(url, advice, command, redis_url):
    """Both entry points refuse a sync driver with one line naming DATABASE_URL and the async driver."""
    done = subprocess.run(
        [sys.executable, *command],
        env=process_env(DATABASE_URL=url, REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "DATABASE_URL" in lines[0]
    assert advice in lines[0]
    assert "pw-secret-1" not in done.stderr + done.stdout


def test_a_worker_refuses_an_unmigrated_database(empty_pg_url, redis_url, queue_name):
    """Start-up on a database without the schema exits non-zero, naming `eventworker migrate`."""
    url = empty_pg_url.replace("postgres@", f"postgres:{PASSWORD}@")
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=process_env(DATABASE_URL=url, REDIS_URL=redis_url, EVENTWORKER_QUEUE_NAME=queue_name),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "eventworker migrate" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_migrate_then_check(empty_pg_url, redis_url, queue_name):
    """`migrate` brings an empty database to head; `check` then only misses a worker heartbeat."""
    env = process_env(DATABASE_URL=empty_pg_url, REDIS_URL=redis_url, EVENTWORKER_QUEUE_NAME=queue_name)
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    before = run("check")
    assert before.returncode == 1
    assert "eventworker migrate" in before.stderr
    migrated = run("migrate")
    assert migrated.returncode == 0
    assert f"schema (empty) -> {head_revision()}" in migrated.stdout
    after = run("check")
    assert after.returncode == 1
    assert [line for line in after.stderr.splitlines() if line.startswith("unhealthy")] == [
        f"unhealthy: no worker heartbeat in Redis for queue {queue_name}"
        " (written every 10s by a running worker)"
    ]


async def test_check_is_healthy_while_a_worker_runs(worker_env, start_worker):
    """`check` exits 0 while a worker heartbeats, and 1 once it stopped."""
    worker = start_worker(EVENTWORKER_HEALTH_CHECK_INTERVAL="1")
    worker.wait_started()
    check = [sys.executable, "-m", "worker", "check"]
    deadline = time.monotonic() + 10
    while (
        done := subprocess.run(check, env=worker_env, capture_output=True, text=True, check=False)
    ).returncode:
        assert time.monotonic() < deadline, done.stderr
        await asyncio.sleep(0.2)
    assert done.stdout.strip() == "healthy"
    assert worker.stop() == 0
    assert subprocess.run(check, env=worker_env, capture_output=True, check=False).returncode == 1


def test_demo_runs_on_the_embedded_default(tmp_path):
    """`eventworker demo` with no servers configured ingests its sample and prints the summary."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--events", "800"],
        env=process_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "database: sqlite+aiosqlite:///eventworker-demo.sqlite3"
    assert lines[1] == "redis:    memory://"
    sent = lines[2].split()
    repeated, invalid = int(sent[3].lstrip("(")), int(sent[5])
    assert lines[3] == f"accepted {800 - repeated - invalid}, duplicates {repeated}, rejected {invalid}"
    assert (tmp_path / "eventworker-demo.sqlite3").exists()


def test_demo_runs_on_the_real_servers_when_configured(pg_database, redis_url, queue_name, tmp_path):
    """The same command with DATABASE_URL and REDIS_URL set runs against PostgreSQL and Redis."""
    env = process_env(
        DATABASE_URL=pg_database_url(pg_database, password=PASSWORD),
        REDIS_URL=redis_url,
        EVENTWORKER_QUEUE_NAME=queue_name,
    )
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--events", "800"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.splitlines()[0]
        == f"database: postgresql+asyncpg://postgres:***@127.0.0.1:5432/{pg_database}"
    )
    assert PASSWORD not in done.stdout + done.stderr
    assert not (tmp_path / "eventworker-demo.sqlite3").exists()


@pytest.mark.parametrize("args", [["migrate"], ["failed", "list"], ["dead-letters"]])
def test_cli_commands_fail_in_one_line_when_the_database_is_unreachable(args, redis_url):
    """A CLI command that cannot reach the database prints one line, without the password, and exits 1."""
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nowhere"
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=process_env(DATABASE_URL=url, REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "eventworker: ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 1)"
    ]
    assert PASSWORD not in done.stdout + done.stderr
