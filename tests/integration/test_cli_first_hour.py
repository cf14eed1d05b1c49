"""A newcomer's first hour with the command line, on the real servers: before and after `migrate`.

The story: every command run on a database that was never migrated (or is behind) says, in one
line and exit status 1, to run `eventworker migrate`, on every backend, and `status` calls what it
could not read unknown. After `migrate` the same commands work and say what a person can use:
`config` names the variables a user sets, a misspelt variable is reported, `enqueue` counts
what it read and sent, `dead-letters` prints errors as sentences, the rollups say how far they
have got, `export` will not overwrite a file unless told, `stats` keeps its timing to --verbose.

Each command runs in this process through click's runner (in a thread: the command runs its own
event loop), against the test's own database and Redis queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import _admin, _fresh_database, _mysql_admin, mysql_database_url, pg_database_url
from support import run_worker

from worker.commands.cli import main
from worker.config import Settings, load_settings
from worker.db import schema
from worker.db.engine import Database
from worker.errors import SchemaBehindError

pytestmark = pytest.mark.integration

PASSWORD = "first-hour-S3cret"  # trust auth accepts it; no output may show it


def migrate_line(current: str | None = None) -> str:
    return f"eventworker: {SchemaBehindError(current, schema.head_revision())}"


def settings_of(env: dict[str, str | None]) -> Settings:
    """The settings the commands read from ``env``, for a worker run in this process."""
    return load_settings(
        database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"], queue_name=env["EVENTWORKER_QUEUE_NAME"]
    )


@pytest.fixture
def cli_env(redis_url: str, queue_name: str) -> dict[str, str | None]:
    """Settings for the commands: this test's Redis queue; no settings from the shell running the tests."""
    cleared: dict[str, str | None] = {name: None for name in os.environ if name.startswith("EVENTWORKER_")}
    return {**cleared, "REDIS_URL": redis_url, "EVENTWORKER_QUEUE_NAME": queue_name}


async def eventworker(env: dict[str, str | None], *args: str, cwd: Path | None = None) -> Result:
    """`eventworker ARGS` in this process with ``env``; a traceback would raise here (no catch_exceptions)."""

    def run() -> Result:
        runner = CliRunner()
        if cwd is None:
            return runner.invoke(main, list(args), env=env, catch_exceptions=False)
        previous = Path.cwd()
        os.chdir(cwd)
        try:
            return runner.invoke(main, list(args), env=env, catch_exceptions=False)
        finally:
            os.chdir(previous)

    return await asyncio.to_thread(run)


#: Every command that reads or writes the database, with the settings it needs to do anything.
DATABASE_COMMANDS: list[tuple[list[str], dict[str, str]]] = [
    (["export", "{tmp}/all.ndjson"], {}),
    (["export", "--format", "csv", "{tmp}/all.csv"], {}),
    (["stats"], {}),
    (["dead-letters"], {}),
    (["failed", "list"], {}),
    (["failed", "requeue", "1"], {}),
    (["handlers", "list"], {}),
    (["handlers", "retry", "1"], {}),
    (["rollups", "update"], {}),
    (["rollups", "rebuild"], {}),
    (["rollups", "verify"], {}),
    (["retention"], {"EVENTWORKER_RETENTION_DAYS": "30", "EVENTWORKER_DEAD_LETTER_RETENTION_DAYS": "30"}),
]
#: Exit status and a line of the output of each after `migrate`, on an empty database.
AFTER_MIGRATE = {
    "export all.ndjson": (0, "exported 0 events to {tmp}/all.ndjson"),
    "export --format csv all.csv": (0, "exported 0 events to {tmp}/all.csv"),
    "stats": (0, "dead letters by reason  count"),
    "dead-letters": (0, "(none)"),
    "failed list": (0, "(none)"),
    "failed requeue 1": (1, "Error: no failed job 1"),
    "handlers list": (0, "(none)"),
    "handlers retry 1": (1, "Error: no handler run 1"),
    "rollups update": (0, "counted 0 events into 0 bucket rows in 0 transactions; no event counted yet;"),
    "rollups rebuild": (0, "counted 0 events into 0 bucket rows in 1 transaction; no event counted yet;"),
    "rollups verify": (0, "rollups match the events they cover: 0 buckets"),
    "retention": (0, "events: deleted 0 in 0 chunks"),
}


def _args(args: list[str], tmp_path: Path) -> list[str]:
    return [arg.format(tmp=tmp_path) for arg in args]


def _key(args: list[str]) -> str:
    return " ".join(Path(arg).name if arg.startswith("{tmp}") else arg for arg in args)


async def test_every_database_command_before_and_after_migrate(empty_pg_url, cli_env, tmp_path):
    """Never migrated: one line naming `eventworker migrate`, exit 1, nothing written. Then `migrate`,
    and each command does its work."""
    url = pg_database_url(empty_pg_url.rsplit("/", 1)[1], password=PASSWORD)
    env = {**cli_env, "DATABASE_URL": url}
    for args, extra in DATABASE_COMMANDS:
        result = await eventworker({**env, **extra}, *_args(args, tmp_path))
        assert (result.exit_code, result.stdout) == (1, ""), (args, result.output)
        assert result.stderr.splitlines() == [migrate_line()], args
    assert list(tmp_path.iterdir()) == []  # no export, not even a partial one

    migrated = await eventworker(env, "migrate")
    assert migrated.exit_code == 0, migrated.output
    assert migrated.stdout.endswith(f"schema (empty) -> {schema.head_revision()}\n")
    for args, extra in DATABASE_COMMANDS:
        result = await eventworker({**env, **extra}, *_args(args, tmp_path))
        code, line = AFTER_MIGRATE[_key(args)]
        assert result.exit_code == code, (args, result.output)
        assert line.format(tmp=tmp_path) in result.output, (args, result.output)
        assert PASSWORD not in result.output


async def test_status_before_migrate_calls_the_database_sections_unknown(empty_pg_url, cli_env):
    """`status` before `migrate`: one problem naming `eventworker migrate`; no section claims zero."""
    env = {**cli_env, "DATABASE_URL": empty_pg_url}
    before = await eventworker(env, "status")
    assert before.exit_code == 1
    lines = before.stdout.splitlines()
    sections = "failed jobs, dead letters, handler runs, rollups, chart"
    assert f"  ! could not read {sections}: {migrate_line().removeprefix('eventworker: ')}" in lines
    assert sum("eventworker migrate" in line for line in lines) == 1
    for section in ("rollups", "handler runs", "failed jobs", "dead letters"):
        assert f"{section}: unknown (could not read)" in lines
    assert not [line for line in lines if line.startswith(("failed jobs: 0", "dead letters: 0"))]
    data = json.loads((await eventworker(env, "status", "--json")).stdout)
    assert data["failed_by_job"] is None
    assert data["dead_letters_by_reason"] is None
    assert data["rollups"] is None

    assert (await eventworker(env, "migrate")).exit_code == 0
    after = await eventworker(env, "status")
    lines = after.stdout.splitlines()
    assert "failed jobs: 0 (none)" in lines
    assert "dead letters: 0 (none)" in lines
    assert "rollups: never updated, no event counted yet; 0 events waiting to be counted" in lines
    assert not any("could not read" in line for line in lines)


async def test_a_schema_behind_this_version_names_its_revision(empty_pg_url, cli_env):
    """At the first revision, a command that needs the second's tables says so and which it is at."""
    db = Database.from_settings(load_settings(database_url=empty_pg_url))
    try:
        await schema.upgrade(db.engine, "0001")
    finally:
        await db.dispose()
    env = {**cli_env, "DATABASE_URL": empty_pg_url}
    for args in (["rollups", "update"], ["handlers", "list"]):
        result = await eventworker(env, *args)
        assert result.exit_code == 1
        assert result.stderr.splitlines() == [migrate_line("0001")]
    assert (await eventworker(env, "dead-letters")).stdout == "(none)\n"  # its table is in 0001


@pytest.fixture
async def empty_database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no schema at all, on ``backend``."""
    if backend in {"asyncpg", "psycopg"}:
        name = await _fresh_database(None)
        yield pg_database_url(name, driver=backend)
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    elif backend in {"aiomysql", "asyncmy"}:
        name = f"ew_test_{uuid.uuid4().hex[:12]}"
        await _mysql_admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield mysql_database_url(name, backend)
        await _mysql_admin(f"DROP DATABASE IF EXISTS `{name}`")
    else:
        yield f"sqlite+aiosqlite:///{tmp_path}/never-migrated.db"


async def test_every_backend_says_migrate_on_a_missing_table(backend, empty_database_url, cli_env, tmp_path):
    """PostgreSQL's UndefinedTable (also raw from asyncpg's COPY), MySQL's 1146, SQLite's "no such table"."""
    env = {**cli_env, "DATABASE_URL": empty_database_url}
    for args in (["export", str(tmp_path / "all.ndjson")], ["dead-letters"], ["rollups", "update"]):
        result = await eventworker(env, *args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.splitlines() == [migrate_line()], args


async def test_config_prints_the_variables_a_user_sets_with_effective_values(pg_url, cli_env):
    """VARIABLE=value lines, the application name each process gets, passwords hidden; --json the same."""
    url = pg_database_url(pg_url.rsplit("/", 1)[1], password=PASSWORD)
    env = {**cli_env, "DATABASE_URL": url, "EVENTWORKER_DB_POOL_SIZE": "7"}
    result = await eventworker(env, "config")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"DATABASE_URL={url.replace(PASSWORD, '***')}" in lines
    assert "EVENTWORKER_DB_POOL_SIZE=7" in lines
    assert f"EVENTWORKER_QUEUE_NAME={cli_env['EVENTWORKER_QUEUE_NAME']}" in lines
    [name] = [line for line in lines if line.startswith("EVENTWORKER_APPLICATION_NAME=")]
    assert name.startswith("EVENTWORKER_APPLICATION_NAME=eventworker:")
    assert name.endswith(":<pid>  (unset: this host and each process's own pid)")
    assert "EVENTWORKER_RETENTION_DAYS=  (unset)" in lines
    assert not [line for line in lines if line.split("=", 1)[0].islower()]  # no field names
    assert PASSWORD not in result.output
    data = json.loads((await eventworker(env, "config", "--json")).stdout)
    assert data["EVENTWORKER_DB_POOL_SIZE"] == 7
    assert data["EVENTWORKER_RETENTION_DAYS"] is None
    assert data["DATABASE_URL"] == url.replace(PASSWORD, "***")


async def test_a_misspelt_setting_is_reported_and_strict_mode_refuses_it(cli_env, tmp_path):
    """EVENTWORKER_MAX_JOB and an unknown settings.env key: warnings with the closest name, exit 0;
    EVENTWORKER_STRICT_SETTINGS=true: a configuration error, exit 2. The tests' own variables are known."""
    (tmp_path / "settings.env").write_text("MAX_TRIES=3\nEVENTWORKER_POLL_DELAY=0.1\n")
    env = {**cli_env, "EVENTWORKER_MAX_JOB": "3", "EVENTWORKER_TEST_PG_URL": "postgresql://elsewhere/x"}
    warned = await eventworker(env, "config", cwd=tmp_path)
    assert warned.exit_code == 0
    assert warned.stderr.splitlines() == [
        "eventworker: warning: EVENTWORKER_MAX_JOB: not a setting, ignored;"
        " did you mean EVENTWORKER_MAX_JOBS?",
        "eventworker: warning: MAX_TRIES: not a setting (in settings.env), ignored;"
        " did you mean EVENTWORKER_MAX_TRIES?",
    ]
    assert "EVENTWORKER_POLL_DELAY=0.1" in warned.stdout.splitlines()  # the file is read all the same
    strict = await eventworker({**env, "EVENTWORKER_STRICT_SETTINGS": "true"}, "config", cwd=tmp_path)
    assert strict.exit_code == 2
    assert strict.stderr.splitlines() == [
        "eventworker: configuration error: EVENTWORKER_MAX_JOB: not a setting, refused as"
        " EVENTWORKER_STRICT_SETTINGS is on; did you mean EVENTWORKER_MAX_JOBS?"
    ]
    assert strict.stdout == ""


NINE_LINES = [
    *(
        json.dumps({"specversion": "1.0", "id": f"e-{n}", "source": "/first-hour", "type": "t"})
        for n in range(6)
    ),
    json.dumps({"specversion": "1.0", "id": "no-source", "type": "t"}),  # JSON, not a valid event
    "{not json",
    "",
]


async def test_enqueue_says_what_it_read_and_sent_and_dead_letters_read_as_sentences(
    pg_url, cli_env, tmp_path
):
    """9 lines (one not JSON, one blank): the counts with their plurals; once a worker ran, dead-letters
    prints each error as `field: message` (the JSON keeps the list)."""
    source = tmp_path / "events.ndjson"
    source.write_text("\n".join(NINE_LINES) + "\n")
    env = {**cli_env, "DATABASE_URL": pg_url, "EVENTWORKER_POLL_DELAY": "0.01"}
    sent = await eventworker(env, "enqueue", str(source))
    assert sent.exit_code == 0, sent.output
    assert sent.stdout == (
        "read 9 lines: sent 8 events in 1 job, of which 1 is not JSON and will be a dead letter;"
        " skipped 1 blank line\n"
    )
    assert sent.stderr.startswith("line 8: not JSON (")
    one = tmp_path / "one.ndjson"
    one.write_text(NINE_LINES[0] + "\n")
    assert (await eventworker(env, "enqueue", str(one))).stdout == (
        "read 1 line: sent 1 event in 1 job, all JSON; skipped 0 blank lines\n"
    )
    await run_worker(settings_of(env))

    letters = await eventworker(env, "dead-letters")
    assert letters.exit_code == 0, letters.output
    lines = letters.stdout.splitlines()
    assert "  errors: source: Field required" in lines
    assert "  errors: <event>: an event must be a JSON object, got string" in lines
    assert '  raw: "{not json"' in lines
    assert not any("{'loc'" in line or "errors=[" in line for line in lines)
    data: list[dict[str, Any]] = json.loads((await eventworker(env, "dead-letters", "--json")).stdout)
    assert sorted(d["errors"][0]["msg"] for d in data) == [
        "Field required",
        "an event must be a JSON object, got string",
    ]


async def test_rollups_and_status_say_how_far_the_counts_have_got(pg_url, cli_env, tmp_path):
    """No transaction id: events counted, events waiting, and when the last one counted was received."""
    source = tmp_path / "events.ndjson"
    source.write_text("\n".join(NINE_LINES[:6]) + "\n")
    env = {**cli_env, "DATABASE_URL": pg_url}
    assert (await eventworker(env, "enqueue", str(source))).exit_code == 0
    await run_worker(settings_of(env))
    waiting = await eventworker(env, "status")
    assert "rollups: never updated, no event counted yet; 6 events waiting to be counted" in waiting.stdout
    # On PostgreSQL an update counts up to the oldest transaction still open on the server (any
    # database's): run it until that has moved past our events, as the worker's cron job would.
    counted, deadline = 0, time.monotonic() + 30
    while True:
        updated = await eventworker(env, "rollups", "update")
        assert updated.exit_code == 0, updated.output
        line = updated.stdout.splitlines()[0]
        counted += int(line.split()[1])
        if line.endswith("; 0 events waiting to be counted"):
            break
        assert time.monotonic() < deadline, line
        await asyncio.sleep(0.2)
    assert counted == 6
    assert line.startswith("counted ")
    assert "; the last event counted was received " in line
    assert line.endswith(" ago); 0 events waiting to be counted")
    status = (await eventworker(env, "status")).stdout
    assert "rollups: the last event counted was received " in status
    assert "checkpoint" not in status + updated.stdout
    verified = await eventworker(env, "rollups", "verify")
    assert verified.stdout.startswith("rollups match the events they cover: ")


async def test_export_refuses_to_overwrite_a_file_unless_forced(pg_url, cli_env, tmp_path):
    """An existing PATH: one line, exit 1, the file untouched; --force replaces it."""
    env = {**cli_env, "DATABASE_URL": pg_url}
    path = tmp_path / "events.ndjson"
    path.write_text("keep me\n")
    refused = await eventworker(env, "export", str(path))
    assert refused.exit_code == 1
    assert refused.stderr.splitlines() == [f"eventworker: {path} already exists; give --force to replace it"]
    assert path.read_text() == "keep me\n"
    forced = await eventworker(env, "export", str(path), "--force")
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.startswith(f"exported 0 events to {path} ")
    assert path.read_text() == ""
