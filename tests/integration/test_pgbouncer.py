"""Behind PgBouncer in transaction mode: with EVENTWORKER_DB_POOLER=transaction every command and a worker
work, and no prepared statement or temporary table outlives a transaction; without the setting a worker
or a command says so in one line naming it, never with a traceback.

The ingestion, export, rollup and handler tests run through PgBouncer too (their ``backend`` fixture
includes ``asyncpg via pgbouncer`` and ``psycopg via pgbouncer``); this module covers what those do
not: the command line and the worker's start-up, the server's view of what the drivers left behind,
and the one-line error.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest
from click.testing import CliRunner
from conftest import PG_URL, _admin, _fresh_database
from pgbouncer import PgBouncer
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from support import event, process_env, unique_source

from jobs.export import export_to_file
from worker.config import load_settings
from worker.db.engine import Database
from worker.db.models import Event
from worker.db.sql import statements
from worker.domain.export import ExportFilter
from worker.domain.rows import event_row
from worker.errors import ConfigError
from worker.protocol.events import validate_batch
from worker.protocol.serialization import serialize

pytestmark = pytest.mark.integration

DRIVERS = ("asyncpg", "psycopg")


@pytest.fixture
async def empty_database():
    """The name of a fresh database with no schema (``eventworker migrate`` runs through PgBouncer)."""
    name = await _fresh_database(None)
    yield name
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def one_server_connection():
    """A PgBouncer of this test with one server connection per database: whatever a client leaves on
    it, the next client meets."""
    bouncer = PgBouncer(PG_URL, pool_size=1).start()
    yield bouncer
    bouncer.stop()


async def _command(env: dict[str, str], *args: str, stdin: bytes | None = None) -> tuple[int, str]:
    """``python -m worker ARGS`` with ``env``: its exit status and its output (stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(stdin), 90)
    return int(process.returncode or 0), output.decode(errors="replace")


async def _all_succeed(env: dict[str, str], *commands: tuple[str, ...]) -> dict[str, str]:
    """Run ``commands`` at once; fail naming each that did not exit 0; return each one's output."""
    done = await asyncio.gather(*(_command(env, *command) for command in commands))
    failed = [f"{' '.join(c)} -> {rc}:\n{out}" for c, (rc, out) in zip(commands, done, strict=True) if rc]
    assert not failed, "\n".join(failed)
    return {" ".join(command): output for command, (_, output) in zip(commands, done, strict=True)}


def _events(source: str, count: int) -> bytes:
    """NDJSON: ``count`` events (enough for the COPY path in one job), one invalid input, one repeat."""
    lines = [event(n, source, type=f"com.example.{n % 3}") for n in range(count)]
    lines += [{"specversion": "1.0", "id": "bad", "source": source, "type": 7}, lines[0]]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def _in_process(settings: dict[str, str], *commands: tuple[str, ...]) -> dict[str, str]:
    """Run ``commands`` one after another in this process (click's runner, the settings in its
    environment); fail naming each that did not exit 0; return each one's output."""
    from worker.commands.cli import main

    runner = CliRunner()
    outputs, failed = {}, []
    for command in commands:
        result = runner.invoke(main, list(command), env=settings)
        outputs[" ".join(command)] = result.output
        if result.exit_code != 0:
            failed.append(f"{' '.join(command)} -> {result.exit_code}:\n{result.output}{result.exception!r}")
    assert not failed, "\n".join(failed)
    return outputs


@pytest.mark.timeout(240)
@pytest.mark.parametrize("driver", DRIVERS)
async def test_every_command_and_a_worker_work_through_pgbouncer(
    driver, pgbouncer, empty_database, redis_url, queue_name, tmp_path
):
    """migrate, enqueue, a worker (run --burst), then every command that reads or changes the database,
    all through PgBouncer in transaction mode: each exits 0, and what the worker stored is exported.

    Processes of their own for migrate, the worker and the filtered exports (below); the rest in this
    process, for time. ``dashboard`` and ``serve`` (servers) read what ``status`` reads.
    """
    settings = {
        "DATABASE_URL": pgbouncer.url(empty_database, driver),
        "REDIS_URL": redis_url,
        "EVENTWORKER_QUEUE_NAME": queue_name,
        "EVENTWORKER_DB_POOLER": "transaction",
        "EVENTWORKER_BATCH_SIZE": "200",
        "EVENTWORKER_RETENTION_DAYS": "365",
        "EVENTWORKER_DEAD_LETTER_RETENTION_DAYS": "365",
        "EVENTWORKER_LOG_FORMAT": "json",
    }
    env = process_env(**settings)
    source = unique_source()
    (tmp_path / "events.ndjson").write_bytes(_events(source, 150))
    await _all_succeed(env, ("migrate",))
    await asyncio.to_thread(_in_process, settings, ("enqueue", str(tmp_path / "events.ndjson")))
    worker = await _all_succeed(env, ("run", "--burst"))
    assert "Traceback" not in worker["run --burst"]

    database = Database.from_settings(load_settings(database_url=settings["DATABASE_URL"]))
    try:
        async with database.transaction() as session:
            stored = await session.scalar(select(func.count()).select_from(Event))
            call = serialize({"args": [[]], "kwargs": {}})
            failed = await statements.record_failed_job(
                session,
                job_id="j",
                job_name="ingest_events",
                args=call,
                error="x",
                tries=5,
                now=datetime.now(UTC),
            )
    finally:
        await database.dispose()
    assert stored == 150

    # Filtered, twice, each in a process of its own: asyncpg names the statement that types the
    # filter's parameters, counting from 1 in each process; the first's must not be left behind.
    exports = [str(tmp_path / f"{n}.ndjson") for n in range(2)]
    for path in exports:
        await _all_succeed(
            env, ("export", path, "--type", "com.example.1", "--since", "2000-01-01T00:00:00Z")
        )
    first, again = [await asyncio.to_thread(Path(path).read_bytes) for path in exports]
    assert len(first.splitlines()) == 50
    assert again == first

    outputs = await asyncio.to_thread(
        _in_process,
        settings,
        ("status",),
        ("stats", "--window", "1h"),
        ("export", str(tmp_path / "all.csv"), "--format", "csv", "--source", source),
        ("failed", "list"),
        ("failed", "requeue", str(failed)),
        ("dead-letters",),
        ("handlers", "list"),
        ("handlers", "retry", "--all-failed"),
        ("rollups", "update"),
        ("rollups", "verify"),
        ("rollups", "rebuild"),
        ("retention",),
        ("config",),
    )
    assert "could not read" not in outputs["status"], outputs["status"]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_nothing_outlives_a_transaction_on_the_server_connection(
    driver, one_server_connection, pg_database, tmp_path
):
    """Ingest jobs (asyncpg's COPY path included) and a filtered export (asyncpg's COPY from a query with
    parameters) through one pooled server connection leave on it no prepared statement and no temporary
    table; the job's tag lasts its transaction only."""
    settings = load_settings(
        database_url=one_server_connection.url(pg_database, driver),
        db_pooler="transaction",
        application_name="ew-pooled-client",
    )
    db = Database.from_settings(settings)
    source = unique_source()
    tags = []
    try:
        for n in range(3):
            rows = _rows([event(f"{n}-{k}", source) for k in range(100)], f"job-{n}")
            async with db.transaction("ingest_events") as session:
                assert await statements.insert_events(session, rows) == 100
                tags.append(await _application_names(pg_database))
        wanted = ExportFilter(source=source, since=datetime(2000, 1, 1, tzinfo=UTC))
        exported = await export_to_file(db, tmp_path / "out.ndjson", wanted, chunk_size=1000)
        assert exported.rows == 300
        async with db.transaction() as session:
            left = (
                await session.execute(
                    text(
                        "SELECT (SELECT count(*) FROM pg_prepared_statements),"
                        " (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),"
                        " current_setting('application_name')"
                    )
                )
            ).one()
    finally:
        await db.dispose()
    assert tags == [["ingest_events@ew-pooled-client"]] * 3
    assert tuple(left) == (0, 0, "ew-pooled-client")


def _rows(events: list[dict], job_id: str) -> list:
    """The ingest job's rows for ``events``, received now."""
    now = datetime.now(UTC)
    return [event_row(item, now, job_id) for item in validate_batch(events, 1_048_576).events]


async def _application_names(database: str) -> list[str]:
    """application_name of every server connection to ``database``, as PostgreSQL shows them."""
    connection = await asyncpg.connect(PG_URL)
    try:
        rows = await connection.fetch(
            "SELECT application_name FROM pg_stat_activity"
            " WHERE datname = $1 AND backend_type = 'client backend'",
            database,
        )
        return [row[0] for row in rows]
    finally:
        await connection.close()


async def _leave_a_named_statement(bouncer: PgBouncer, database: str) -> None:
    """What an asyncpg client with its defaults leaves on its server connection: ``__asyncpg_stmt_1__``,
    the name of the first statement asyncpg prepares in a process (its count is the process's)."""
    dsn = make_url(bouncer.url(database)).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute('PREPARE "__asyncpg_stmt_1__" AS SELECT 1')
    finally:
        await connection.close()


def _one_line_naming_the_setting(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "EVENTWORKER_DB_POOLER" in line]
    assert len(lines) == 1, output
    assert "EVENTWORKER_DB_POOLER=transaction" in lines[0]
    return lines[0]


async def test_a_worker_behind_pgbouncer_without_the_setting_refuses_to_start_in_one_line(
    one_server_connection, pg_database, redis_url, queue_name
):
    """The issue's start-up: a prepared statement clash on the pooled server connection ends the worker with
    one log line naming EVENTWORKER_DB_POOLER, exit status 1; with the setting the same worker starts."""
    await _leave_a_named_statement(one_server_connection, pg_database)
    env = process_env(
        DATABASE_URL=one_server_connection.url(pg_database),
        REDIS_URL=redis_url,
        EVENTWORKER_QUEUE_NAME=queue_name,
        EVENTWORKER_STARTUP_WAIT="2",
    )
    status, output = await _command(env, "run", "--burst")
    assert status == 1, output
    line = orjson.loads(_one_line_naming_the_setting(output))
    assert line["event"] == "worker.refused_to_start"
    assert "already exists" in line["error"]
    status, output = await _command({**env, "EVENTWORKER_DB_POOLER": "transaction"}, "run", "--burst")
    assert status == 0, output


@pytest.mark.parametrize("command", [("failed", "list"), ("migrate",), ("stats",)])
async def test_a_command_behind_pgbouncer_without_the_setting_says_so_in_one_line(
    command, one_server_connection, pg_database, redis_url
):
    """A command meeting the clash exits 1 with ``eventworker: EVENTWORKER_DB_POOLER: ...``, one line."""
    await _leave_a_named_statement(one_server_connection, pg_database)
    env = process_env(DATABASE_URL=one_server_connection.url(pg_database), REDIS_URL=redis_url)
    status, output = await _command(env, *command)
    assert status == 1, output
    assert _one_line_naming_the_setting(output).startswith("eventworker: EVENTWORKER_DB_POOLER: ")


async def test_psycopg_without_the_setting_names_it_once_it_prepares(one_server_connection, pg_database):
    """psycopg prepares a statement on its fifth run: behind the pooler, that clashes with another
    client's ``_pg3_0``, and the error names the setting (a job's retries and failed record show it)."""
    dsn = make_url(one_server_connection.url(pg_database, "psycopg")).set(drivername="postgresql")
    import psycopg

    other = await psycopg.AsyncConnection.connect(dsn.render_as_string(hide_password=False), autocommit=True)
    try:
        for _ in range(6):  # prepared as _pg3_0 on the one server connection, which keeps it
            await other.execute("SELECT 2")
    finally:
        await other.close()
    db = Database.from_settings(load_settings(database_url=one_server_connection.url(pg_database, "psycopg")))
    try:
        with pytest.raises(ConfigError, match=r"EVENTWORKER_DB_POOLER: .*_pg3_0.* already exists"):  # noqa: PT012
            for _ in range(6):  # a transaction each, as six jobs would run it
                async with db.transaction() as session:
                    await session.execute(text("SELECT 1"))
    finally:
        await db.dispose()
    with_setting = Database.from_settings(
        load_settings(database_url=one_server_connection.url(pg_database, "psycopg"), db_pooler="transaction")
    )
    try:
        for _ in range(6):
            async with with_setting.transaction() as session:
                assert await session.scalar(text("SELECT 1")) == 1
    finally:
        await with_setting.dispose()


async def test_only_prepared_statement_clashes_name_the_setting(pg_url):
    """A statement that exists already (42P05) or not at all (26000), raised by the real server, is a
    pooler's doing; another error is left as it is."""
    from worker.db.failures import pooler_mismatch

    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("PREPARE twice AS SELECT 1")
        with pytest.raises(asyncpg.PostgresError) as duplicate:
            await connection.execute("PREPARE twice AS SELECT 1")
        with pytest.raises(asyncpg.PostgresError) as missing:
            await connection.execute("EXECUTE never_prepared")
        with pytest.raises(asyncpg.PostgresError) as other:
            await connection.execute("SELECT * FROM no_such_table")
    finally:
        await connection.close()
    assert pooler_mismatch(duplicate.value) == 'prepared statement "twice" already exists'
    assert pooler_mismatch(missing.value) == 'prepared statement "never_prepared" does not exist'
    assert pooler_mismatch(other.value) is None


async def test_status_behind_pgbouncer_without_the_setting_names_it_once(
    one_server_connection, pg_database, redis_url
):
    """`status` reads five sections of the database: meeting the clash, it says so in one problem line
    naming the setting, not once per section, and claims no figure it could not read."""
    await _leave_a_named_statement(one_server_connection, pg_database)
    env = process_env(DATABASE_URL=one_server_connection.url(pg_database), REDIS_URL=redis_url)
    status, output = await _command(env, "status")
    assert status == 1, output
    line = _one_line_naming_the_setting(output)
    assert "could not read" in line
    assert "failed jobs: unknown (could not read)" in output
