"""Three real workers, watched the ways a person would: Prometheus scrapes, `status`, `health`, the dashboard.

The story: three worker processes with metrics on free ports store a few hundred events
(some repeated, some invalid, one carrying a <script> payload), fail a job for good and run
the rollups. Then each worker's /metrics adds up to what was sent, `status --json` shows the
three workers, the queue, the failure and the dead letters, `health` passes; a killed worker
turns `health` red by name. The dashboard, loaded in headless Chromium (Debian's package),
shows the same figures and the <script> payload as text, and leaves a screenshot
(``EVENTWORKER_TEST_SCREENSHOT=docs/dashboard.png`` keeps it where docs/operating.md shows it).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import pg_database_url
from prometheus_client.parser import text_string_to_metric_families
from support import WorkerProcess, catch_up_rollups, process_env

from worker.config import Settings, load_settings
from worker.ops.health import health
from worker.ops.status import gather_status
from worker.protocol.producer import EventProducer

pytestmark = pytest.mark.e2e

SCRIPT = "<script>document.title='pwned'</script>"
TYPES = ("com.example.order.created", "com.example.order.paid", "com.example.user.signup")
MINUTES = 170
CHROMIUM = os.environ.get("EVENTWORKER_TEST_CHROMIUM", "/usr/bin/chromium")


def sample_events() -> list[dict[str, Any]]:
    """Events over the last MINUTES minutes, a different rhythm per type, so the chart has shape."""
    now = datetime.now(UTC)
    events = []
    for minute in range(MINUTES):
        moment = (now - timedelta(minutes=minute, seconds=30)).isoformat()
        for k, type_ in enumerate(TYPES):
            count = max(0, round(2 + 1.6 * math.sin(minute / (5 + 4 * k) + k)))
            events += [
                {
                    "specversion": "1.0",
                    "id": f"{type_}-{minute}-{n}",
                    "source": f"/shop/{k}",
                    "type": type_,
                    "time": moment,
                    "data": {"minute": minute},
                }
                for n in range(count)
            ]
    return events


def cli(env: dict[str, str], *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run `eventworker` commands at once (each is a Python start-up: they add up); their results."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    results = []
    for command, process in zip(commands, processes, strict=True):
        out, err = process.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return results


def wait_until(check: Callable[[], Any], what: str, within: float = 30) -> Any:
    deadline = time.monotonic() + within
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


async def eventually(check: Callable[[], Awaitable[Any]], what: str, within: float = 30) -> Any:
    deadline = time.monotonic() + within
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return result


Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Scrape:
    """Every sample of a worker's /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(scrapes: list[Scrape], name: str, **labels: str) -> float:
    """The sum over all workers of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for s in scrapes for (n, ls), v in s.items() if n == name and wanted <= ls)


@pytest.fixture
def env(pg_database, redis_url, queue_name) -> dict[str, str]:
    return process_env(
        DATABASE_URL=pg_database_url(pg_database),
        REDIS_URL=redis_url,
        EVENTWORKER_QUEUE_NAME=queue_name,
        EVENTWORKER_POLL_DELAY="0.01",
        # Stale after 3 missed beats: 6 s, so a loaded machine does not make a live worker look dead.
        EVENTWORKER_HEALTH_CHECK_INTERVAL="2",
        EVENTWORKER_METRICS_PORT="0",
        EVENTWORKER_METRICS_HOST="127.0.0.1",
        EVENTWORKER_METRICS_SAMPLE_INTERVAL="0.2",
        EVENTWORKER_MAX_TRIES="1",
    )


@pytest.fixture
def settings_of(env) -> Settings:
    """The workers' settings, for looking from this process too."""
    return load_settings(
        database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"], queue_name=env["EVENTWORKER_QUEUE_NAME"]
    )


@pytest.fixture
def three_workers(env, tmp_path) -> Iterator[list[WorkerProcess]]:
    """Three workers, started at once, killed at the end whatever happened."""
    workers = [WorkerProcess(env, tmp_path / f"worker-{n}.log") for n in range(3)]
    try:
        for worker in workers:
            worker.wait_started()
        yield workers
    finally:
        for worker in workers:
            worker.kill()


@pytest.fixture
async def worked(env, settings_of, three_workers, tmp_path) -> dict[str, Any]:
    """The workers have stored the sample (plus a repeat and two bad inputs), failed a job, run rollups."""
    events = sample_events()
    lines = [orjson.dumps(e) for e in events] + [orjson.dumps(events[0])]
    lines += [
        orjson.dumps({"specversion": "1.0", "id": "x", "type": "t", "data": SCRIPT}),
        b"not json at all",
    ]
    (tmp_path / "events.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    [sent] = cli(env, ["enqueue", str(tmp_path / "events.ndjson"), "--batch-size", "50"])
    assert sent.returncode == 0, sent.stderr
    jobs = int(sent.stdout.split(" in ")[1].split()[0])
    ports = [w.started()["metrics_listening_on"] for w in three_workers]
    wait_until(
        lambda: (
            total([scrape(p) for p in ports], "eventworker_jobs_succeeded_total", job="ingest_events") == jobs
        ),
        "the ingest jobs",
    )
    queue = settings_of.queue_name
    async with EventProducer(settings_of.redis_url, queue_name=queue) as producer:
        await producer.redis.enqueue_job("rebuild_rollups", "surplus argument", _queue_name=queue)
        await producer.redis.enqueue_job(
            "update_rollups", _queue_name=queue, _job_id=f"update_rollups:{uuid.uuid4().hex}"
        )
        await producer.redis.enqueue_job("ingest_events", [], _queue_name=queue, _defer_by=3600)

    async def failed_and_rolled_up() -> bool:
        status = await gather_status(settings_of)
        [cron] = [c for c in status.cron if c.job == "update_rollups"]
        return bool(status.failed_by_job) and cron.last_finished is not None

    await eventually(failed_and_rolled_up, "the failed job and the rollup job")
    await catch_up_rollups(settings_of)
    return {"events": events, "jobs": jobs, "ports": ports}


async def test_metrics_status_and_health_answer_for_three_workers(env, settings_of, three_workers, worked):
    """Scrapes add up to what was sent; status shows workers, queue, failures; health names a dead worker."""
    ports = worked["ports"]
    assert len(set(ports)) == 3

    def sampled() -> list[Scrape] | None:
        scrapes = [scrape(p) for p in ports]
        done = (
            min(total([s], "eventworker_queue_depth") for s in scrapes) >= 1
            and total(scrapes, "eventworker_queue_due") == 0
            and total(scrapes, "eventworker_rollup_lag_events") == 0
        )
        return scrapes if done else None

    scrapes = wait_until(sampled, "a sample with the deferred job and no rollup lag on all three workers")
    accepted = len(worked["events"])
    assert total(scrapes, "eventworker_jobs_started_total", job="ingest_events") == worked["jobs"]
    assert total(scrapes, "eventworker_jobs_failed_total", job="rebuild_rollups") == 1
    assert total(scrapes, "eventworker_jobs_succeeded_total", job="update_rollups") >= 1  # and cron ticks
    assert total(scrapes, "eventworker_job_duration_seconds_count", job="ingest_events") == worked["jobs"]
    assert total(scrapes, "eventworker_events_total", outcome="accepted") == accepted
    assert total(scrapes, "eventworker_events_total", outcome="accepted", type=TYPES[0], source="/shop/0") > 0
    assert total(scrapes, "eventworker_events_total", outcome="duplicate") == 1
    assert total(scrapes, "eventworker_events_total", outcome="rejected") == 2
    assert total(scrapes, "eventworker_dead_letters_total", reason="invalid") == 2
    assert total(scrapes, "eventworker_queue_oldest_job_age_seconds") == 0
    assert total(scrapes, "eventworker_db_pool_connections", state="size") == 3 * 5
    assert total(scrapes, "eventworker_worker_jobs_running") == 0

    async def beaten() -> bool:  # heartbeats come every 2 s here: the jobs may all be done before the next
        status = await gather_status(settings_of)
        return sum(w.jobs_done.get("ok", 0) for w in status.workers) >= worked["jobs"] + 1

    await eventually(beaten, "a heartbeat of each worker counting its jobs")
    shown, healthy, local = cli(env, ["status", "--json"], ["health"], ["check", "--local"])
    assert shown.returncode == 0, shown.stderr
    assert (healthy.returncode, healthy.stdout) == (0, "healthy\n"), healthy.stderr
    assert (local.returncode, local.stdout) == (0, "healthy\n"), local.stderr
    status = orjson.loads(shown.stdout)
    assert sorted(w["metrics_port"] for w in status["workers"]) == sorted(ports)
    assert [w["stale"] for w in status["workers"]] == [False] * 3
    assert sum(w["jobs_done"].get("ok", 0) for w in status["workers"]) >= worked["jobs"] + 1
    # The deferred job waits; arq enqueues each cron tick a second early, so one more may show.
    queue = status["queue"]
    assert queue["name"] == settings_of.queue_name
    assert 1 <= queue["deferred"] <= queue["waiting"] <= 2
    assert status["failed_by_job"] == {"rebuild_rollups": 1}
    assert "TypeError" in status["recent_failures"][0]["error"]
    assert status["dead_letters_by_reason"] == {"invalid": 2}
    assert status["rollups"]["events"] == 0
    [cron] = [c for c in status["cron"] if c["job"] == "update_rollups"]
    assert cron["last_finished"]["outcome"] == "ok"
    assert status["problems"] == ["failed jobs: 1 (`eventworker failed list`)"]

    first = min(status["workers"], key=lambda w: w["started_at"])
    [victim] = [w for w in three_workers if w.process.pid == first["pid"]]
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    await eventually(lambda: health(settings_of), "the killed worker to go stale", within=20)
    unhealthy, named = cli(env, ["health"], ["health", "--worker-id", first["worker_id"]])
    stale = f"unhealthy: worker {first['worker_id']}: last heartbeat"
    assert unhealthy.returncode == 1
    assert stale in unhealthy.stderr
    assert named.returncode == 1
    assert stale in named.stderr
    assert await health(settings_of, host=socket.gethostname()) == []  # this host's newest worker lives
    [gone] = [w for w in (await gather_status(settings_of)).stale_workers()]
    assert gone.worker_id == first["worker_id"]


def chromium(*args: str, profile: Path) -> str:
    """Run Debian's headless Chromium with no network but loopback, no sandbox (CI runs as root)."""
    assert shutil.which(CHROMIUM), f"{CHROMIUM} missing: .ci/run installs Debian's chromium package"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def is_png(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def dashboard(env) -> Iterator[str]:
    """`eventworker dashboard` on a free port; its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "dashboard", "--port", "0", "--refresh", "30"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("dashboard on http://"), line + (
            process.stderr.read() if process.stderr else ""
        )
        yield line.split()[2]
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)


async def test_the_dashboard_in_a_browser_shows_the_same_and_payloads_as_text(worked, dashboard, tmp_path):
    """Chromium renders the figures status has, the <script> payload as text (never run), and a screenshot."""
    dom = chromium("--dump-dom", dashboard, profile=tmp_path / "profile")
    assert "<title>eventworker: " in dom
    assert "pwned" not in dom.split("</title>")[0]
    assert '<b id="tile-workers">3/3</b>' in dom
    assert '<b id="tile-failed">1</b>' in dom
    assert '<b id="tile-dead-letters">2</b>' in dom
    assert re.search(r'<b id="tile-waiting">[12]</b>', dom)  # the deferred job, maybe a cron tick
    assert '<b id="tile-rollup-lag">0</b>' in dom
    assert dom.count('class="worker-id"') == 3
    assert "TypeError" in dom
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert "<script" not in dom.lower()
    for type_ in TYPES:
        assert f'data-series="{type_}"' in dom

    shot = Path(os.environ.get("EVENTWORKER_TEST_SCREENSHOT") or tmp_path / "dashboard.png")
    chromium(f"--screenshot={shot}", "--window-size=1280,900", dashboard, profile=tmp_path / "profile")
    assert is_png(shot)
