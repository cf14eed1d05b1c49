"""The command line as separate processes, as a newcomer runs it: real PostgreSQL and Redis.

What only a process shows: no traceback reaches the terminal, a signal's exit status, the demo's
file left in the working directory between runs, the shell completion script, and a running
worker's counts as `status` reads them from another process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
from support import WorkerProcess, event, process_env

from worker.db import schema
from worker.errors import SchemaBehindError

pytestmark = pytest.mark.e2e


def eventworker(env: dict[str, str], *args: str, cwd: Path | None = None, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_export_before_migrate_is_one_line_not_a_traceback(empty_pg_url, redis_url, tmp_path):
    """The COPY export on a database never migrated printed 56 lines of traceback; now one, naming migrate."""
    env = process_env(DATABASE_URL=empty_pg_url, REDIS_URL=redis_url)
    done = eventworker(env, "export", str(tmp_path / "all.ndjson"))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"eventworker: {SchemaBehindError(None, schema.head_revision())}"]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "all.ndjson").exists()


def test_status_shows_the_jobs_a_running_worker_did_before_its_next_heartbeat(
    pg_url, redis_url, queue_name, tmp_path
):
    """A worker beating every 30 s: `status` counts its jobs done within seconds of them, not `done none`."""
    env = process_env(
        DATABASE_URL=pg_url,
        REDIS_URL=redis_url,
        EVENTWORKER_QUEUE_NAME=queue_name,
        EVENTWORKER_POLL_DELAY="0.01",
        EVENTWORKER_HEALTH_CHECK_INTERVAL="30",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.wait_started()
        lines = "\n".join(orjson.dumps(event(n)).decode() for n in range(3))
        sent = eventworker(env, "enqueue", "-", "--batch-size", "1", stdin=lines + "\n")
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 10  # well within the next heartbeat (30 s)
        while True:
            status = json.loads(eventworker(env, "status", "--json").stdout)
            [beat] = status["workers"]
            if beat["jobs_done"].get("ok", 0) >= 3:
                break
            assert time.monotonic() < deadline, f"jobs done never shown: {beat}"
            time.sleep(0.2)
        assert beat["heartbeat_age_s"] < 30
        text = eventworker(env, "status").stdout
        assert "done none" not in text
        assert ", done ok " in text
    finally:
        assert worker.stop() == 0, worker.output()


def test_the_dashboard_exits_0_on_sigterm(pg_url, redis_url, tmp_path):
    """`docker stop` sends SIGTERM: the dashboard closes and exits 0, as a worker does (not 143)."""
    env = process_env(DATABASE_URL=pg_url, REDIS_URL=redis_url)
    log = tmp_path / "dashboard.out"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "dashboard", "--port", "0"], env=env, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 30
            while "dashboard on http://" not in log.read_text():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            url = log.read_text().split("dashboard on ", 1)[1].split(" ", 1)[0]
            with urllib.request.urlopen(url + "status.json", timeout=30) as response:
                assert response.status == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "Ctrl-C or SIGTERM stops it" in log.read_text()
    assert "Traceback" not in log.read_text()


def _events_now(stdout: str) -> int:
    [rows] = [line for line in stdout.splitlines() if line.startswith("rows now: ")]
    counts = dict(part.rsplit(" ", 1) for part in rows.removeprefix("rows now: ").split(", "))
    return int(counts["events"])


def test_the_demo_starts_afresh_unless_kept(tmp_path):
    """Two runs in one directory: the second counts only its own events; --keep adds to the first's."""
    env = process_env()
    first = eventworker(env, "demo", "--events", "300", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    stored = _events_now(first.stdout)
    assert 0 < stored <= 300
    again = eventworker(env, "demo", "--events", "300", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert 0 < _events_now(again.stdout) <= 300  # not the first run's rows plus its own
    fresh = _events_now(again.stdout)
    kept = eventworker(env, "demo", "--events", "300", "--keep", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert _events_now(kept.stdout) > fresh
    assert (tmp_path / "eventworker-demo.sqlite3").exists()


def test_the_demo_leaves_a_database_the_user_named_alone(pg_url, redis_url, tmp_path):
    """With DATABASE_URL set nothing is emptied: a second run adds to the first, --keep or not."""
    env = process_env(
        DATABASE_URL=pg_url, REDIS_URL=redis_url, EVENTWORKER_QUEUE_NAME=f"q-{uuid.uuid4().hex}"
    )
    first = eventworker(env, "demo", "--events", "200", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = eventworker(env, "demo", "--events", "200", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert _events_now(second.stdout) > _events_now(first.stdout)


@pytest.mark.parametrize(
    ("shell", "marker"), [("bash", "complete -o nosort"), ("zsh", "compdef"), ("fish", "complete")]
)
def test_shell_completion_prints_a_script(shell, marker):
    """`_EVENTWORKER_COMPLETE=<shell>_source eventworker` prints the completion script to source."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("eventworker"))],
        env=process_env(_EVENTWORKER_COMPLETE=f"{shell}_source"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout
    assert "_EVENTWORKER_COMPLETE" in done.stdout


def test_completion_offers_the_commands():
    """What bash asks on Tab after `eventworker ro` is answered with `rollups`."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("eventworker"))],
        env=process_env(_EVENTWORKER_COMPLETE="bash_complete", COMP_WORDS="eventworker ro", COMP_CWORD="1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["plain,rollups"]
