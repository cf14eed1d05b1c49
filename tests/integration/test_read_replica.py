"""Heavy reads on a streaming replica (``DATABASE_READ_URL``), against a real one the tests start.

``replication`` is a primary cluster and a hot standby made from it by ``pg_basebackup -R``, with
``hot_standby_feedback = on``. Each test has a fresh database on the primary (copied from a migrated
template, events ingested by a real worker in burst mode), replicated to the standby. Pausing the
standby's replay (``pg_wal_replay_pause()``) makes it fall behind at will.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from pgcluster import PgCluster, Replication
from support import enqueue, event, process_env, run_worker

from jobs.export import export_to_file
from worker.config import Settings, load_settings
from worker.db import schema
from worker.db.engine import Database
from worker.db.replica import ReadRouter
from worker.domain.export import ExportFilter, ExportFormat, ExportProgress

pytestmark = pytest.mark.integration

PASSWORD = "replica-pw-31f7"


@pytest.fixture(scope="module")
def replica_template(replication: Replication) -> Iterator[str]:
    """A migrated database on the primary, copied for each test."""
    name = f"ew_replica_tpl_{uuid.uuid4().hex[:8]}"
    replication.primary.execute_now(f'CREATE DATABASE "{name}"')

    async def migrate() -> None:
        db = Database.from_settings(load_settings(database_url=replication.primary.url(name)))
        try:
            await schema.upgrade(db.engine)
        finally:
            await db.dispose()

    asyncio.run(migrate())
    yield name
    replication.primary.execute_now(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Setup:
    """This test's database on the primary, seen through the replica, and its settings."""

    replication: Replication
    database: str
    settings: Settings

    @property
    def primary(self) -> PgCluster:
        return self.replication.primary

    @property
    def replica(self) -> PgCluster:
        return self.replication.replica

    def env(self, **extra: str) -> dict[str, str]:
        """A command's environment: this database on the primary, read from the replica."""
        values = {
            "DATABASE_URL": self.settings.database_url,
            "DATABASE_READ_URL": str(self.settings.database_read_url),
            "REDIS_URL": self.settings.redis_url,
            "EVENTWORKER_QUEUE_NAME": self.settings.queue_name,
        }
        return process_env(**{**values, **extra})

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert PASSWORD not in done.stdout + done.stderr
        return done

    async def ingest(self, first: int, count: int) -> None:
        """Events ``first`` to ``first + count - 1``, in jobs of 100, stored by a worker on the primary."""
        numbers = range(first, first + count)
        batches = [[event(n, source="/replica") for n in numbers[i : i + 100]] for i in range(0, count, 100)]
        await enqueue(self.settings, batches)
        await run_worker(self.settings)

    async def stored(self, cluster: PgCluster) -> int:
        return int(await cluster.fetchval("SELECT count(*) FROM events", database=self.database))

    async def seqs(self, cluster: PgCluster) -> list[str]:
        listed = await cluster.fetchval(
            "SELECT string_agg(seq::text, ',' ORDER BY seq) FROM events", database=self.database
        )
        return str(listed).split(",")


@pytest.fixture
async def setup(replication, replica_template, redis_url, queue_name) -> AsyncIterator[Setup]:
    """A fresh database with 1,000 events on the primary, replayed by the replica; the replica's replay
    is resumed and the database dropped afterwards."""
    name = f"ew_replica_{uuid.uuid4().hex[:8]}"
    await replication.primary.execute(f'CREATE DATABASE "{name}" TEMPLATE "{replica_template}"')
    settings = load_settings(
        database_url=replication.primary.url(name, password=PASSWORD),
        database_read_url=replication.replica.url(name, password=PASSWORD),
        read_replica_max_lag=3600,  # replay is paused at will here; a test lowers it to see the bypass
        redis_url=redis_url,
        queue_name=queue_name,
        poll_delay=0.01,
    )
    found = Setup(replication, name, settings)
    await found.ingest(0, 1000)  # a worker with DATABASE_READ_URL set still writes to DATABASE_URL
    await replication.primary.caught_up(replication.replica)
    try:
        yield found
    finally:
        await replication.replica.execute("SELECT pg_wal_replay_resume()")
        await replication.primary.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _replay_paused(setup: Setup) -> None:
    """Stop the replica replaying WAL (it keeps receiving it)."""
    await setup.replica.execute("SELECT pg_wal_replay_pause()")
    deadline = time.monotonic() + 10
    while await setup.replica.fetchval("SELECT pg_get_wal_replay_pause_state()") != "paused":
        assert time.monotonic() < deadline, "replay did not pause"
        await asyncio.sleep(0.02)


async def _received(setup: Setup) -> None:
    """Wait until the replica has received (not replayed) all the primary has written."""
    target = await setup.primary.wal_lsn()
    deadline = time.monotonic() + 10
    while int(await setup.replica.fetchval("SELECT pg_last_wal_receive_lsn()") or 0) < target:
        assert time.monotonic() < deadline, "the replica did not receive the primary's WAL"
        await asyncio.sleep(0.02)


def _ids(path: Path) -> list[str]:
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


async def test_exports_and_stats_read_the_replica_and_match_the_primary_once_caught_up(setup, tmp_path):
    """With replay paused, export and stats show the replica's (older) data; caught up, the replica's
    export is byte for byte the primary's."""
    await _replay_paused(setup)
    await setup.ingest(1000, 200)
    assert await setup.stored(setup.primary) == 1200
    assert await setup.stored(setup.replica) == 1000

    stale = tmp_path / "from-replica-behind.ndjson"
    done = setup.cli("export", str(stale))
    assert done.returncode == 0, done.stderr
    assert len(_ids(stale)) == 1000, "the export did not read the replica"
    stats = setup.cli("stats", "--json", "--window", "1d")
    assert stats.returncode == 0, stats.stderr
    assert orjson.loads(stats.stdout)["events"] == 1000, "stats did not read the replica"

    await setup.replica.execute("SELECT pg_wal_replay_resume()")
    await setup.primary.caught_up(setup.replica)
    from_replica, from_primary = tmp_path / "from-replica.ndjson", tmp_path / "from-primary.ndjson"
    assert setup.cli("export", str(from_replica)).returncode == 0
    direct = setup.cli("export", str(from_primary), DATABASE_READ_URL="")
    assert direct.returncode == 0, direct.stderr
    assert len(_ids(from_replica)) == 1200
    assert from_replica.read_bytes() == from_primary.read_bytes()


def _change_primary_during(setup: Setup) -> threading.Thread:
    """On the primary: add 300 events, delete every other old one and VACUUM, then wait for the replica.

    Run in a thread of its own (the export's event loop is blocked meanwhile): the VACUUM removes
    rows the replica's export still sees, which is what a recovery conflict is made of.
    """

    async def change() -> None:
        await setup.ingest(5000, 300)
        await setup.primary.execute("DELETE FROM events WHERE seq % 2 = 0", database=setup.database)
        # Other standbys with feedback report an xmin from before the DELETE for up to their status
        # interval (1 s), which keeps VACUUM from removing the rows: let them report a later one.
        await asyncio.sleep(2.5)
        await setup.primary.execute("VACUUM events", database=setup.database)
        await setup.primary.caught_up(setup.replica)

    thread = threading.Thread(target=asyncio.run, args=(change(),))
    thread.start()
    return thread


async def _export_while_primary_changes(setup: Setup, db: Database, path: Path) -> list[str]:
    """A CSV export in chunks of 50 rows (one round trip each); the primary changes after the first chunk."""
    changes: list[threading.Thread] = []

    def after_first_chunk(_progress: ExportProgress) -> None:
        if not changes:
            changes.append(_change_primary_during(setup))
            changes[0].join()  # blocks the export's loop: its snapshot stays open meanwhile

    await export_to_file(
        db, path, ExportFilter(), ExportFormat.CSV, chunk_size=50, progress=after_first_chunk
    )
    assert changes, "the export finished before the primary changed"
    lines = await asyncio.to_thread(path.read_text)
    return [line.split(",")[0] for line in lines.splitlines()[1:]]


async def test_an_export_on_the_replica_is_one_snapshot_and_is_not_cancelled(setup, tmp_path):
    """Rows added, deleted and vacuumed away on the primary mid-export change nothing in it: the export
    is the snapshot it began with, and ``hot_standby_feedback`` keeps recovery from cancelling it."""
    router = ReadRouter(setup.settings)
    try:
        db, lag = await router.choose()
        assert lag is not None
        assert lag.used
        assert lag.standby
        before = await setup.seqs(setup.replica)
        exported = await _export_while_primary_changes(setup, db, tmp_path / "snapshot.csv")
    finally:
        await router.dispose()
    assert len(before) == 1000
    assert exported == before
    after = await setup.seqs(setup.replica)
    assert len(after) == 650, (
        "the primary's changes (300 added, every other row deleted) did not reach the replica"
    )


async def test_without_feedback_a_long_export_on_the_replica_is_cancelled(setup, tmp_path):
    """The control: a replica with ``hot_standby_feedback = off`` and no streaming delay cancels the same
    export when it replays the VACUUM (the reason the setting is documented)."""
    bare = setup.primary.replica(settings={"hot_standby_feedback": "off", "max_standby_streaming_delay": "0"})
    try:
        await setup.primary.caught_up(bare)
        settings = setup.settings.model_copy(update={"database_read_url": bare.url(setup.database)})
        db = Database.from_settings(settings, replica=True)
        try:
            with pytest.raises(Exception) as cut:  # noqa: PT011 - the driver's error when the server hangs up
                await _export_while_primary_changes(
                    Setup(Replication(setup.primary, bare), setup.database, settings),
                    db,
                    tmp_path / "cut.csv",
                )
        finally:
            await db.dispose()
        # Idle in its transaction between two chunks, the export's session is ended by the server:
        # the client sees its connection closed, the server's log says why.
        chain = [cut.value, *_causes(cut.value)]
        assert any(
            "conflict with recovery" in str(exc) or "connection is closed" in str(exc) for exc in chain
        )
        assert "terminating connection due to conflict with recovery" in bare.server_log()
    finally:
        bare.destroy()


def _causes(exc: BaseException) -> list[BaseException]:
    found = []
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        found.append(exc)
    return found


async def test_status_shows_how_far_the_replica_is_behind(setup):
    """``status`` reads the replica and shows its lag: seconds since its last replayed commit while it has
    WAL to replay, and the bytes of WAL the primary wrote that it has not replayed."""
    caught_up = setup.cli("status", "--json")
    replica = orjson.loads(caught_up.stdout)["replica"]
    assert replica["standby"]
    assert replica["used"]
    assert replica["seconds"] == 0.0
    assert replica["bytes_behind"] >= 0  # the primary's background writes (autovacuum) may be in flight

    await _replay_paused(setup)
    await setup.ingest(1000, 100)
    await _received(setup)
    await asyncio.sleep(1.0)
    behind = setup.cli("status", "--json")
    replica = orjson.loads(behind.stdout)["replica"]
    assert replica["standby"]
    assert replica["used"]
    assert replica["bytes_behind"] > 0
    assert replica["seconds"] >= 1.0
    text = setup.cli("status").stdout
    line = next(line for line in text.splitlines() if line.startswith("read replica"))
    assert "s behind (" in line
    assert line.endswith("bytes of WAL); read from it"), line


async def test_a_replica_too_far_behind_is_bypassed_with_a_log_line(setup, tmp_path):
    """Past EVENTWORKER_READ_REPLICA_MAX_LAG the reads go to the primary, and a log line says why."""
    await _replay_paused(setup)
    await setup.ingest(1000, 100)
    await _received(setup)
    await asyncio.sleep(1.2)
    path = tmp_path / "bypassed.ndjson"
    done = setup.cli("export", str(path), EVENTWORKER_READ_REPLICA_MAX_LAG="1")
    assert done.returncode == 0, done.stderr
    assert len(_ids(path)) == 1100, "the export did not read the primary"
    bypassed = [orjson.loads(line) for line in done.stderr.splitlines() if "replica.bypassed" in line]
    assert len(bypassed) == 1, done.stderr
    assert "EVENTWORKER_READ_REPLICA_MAX_LAG=1" in bypassed[0]["reason"]
    assert bypassed[0]["bytes_behind"] > 0

    status = orjson.loads(setup.cli("status", "--json", EVENTWORKER_READ_REPLICA_MAX_LAG="1").stdout)
    assert status["replica"]["used"] is False
    assert any(problem.startswith("read replica bypassed") for problem in status["problems"])


async def test_an_unreachable_replica_is_bypassed(setup, tmp_path):
    """A replica that refuses connections: the reads go to the primary, with a log line."""
    path = tmp_path / "no-replica.ndjson"
    gone = setup.replica.url(setup.database).replace(f":{setup.replica.port}/", ":1/")
    done = setup.cli("export", str(path), DATABASE_READ_URL=gone)
    assert done.returncode == 0, done.stderr
    assert len(_ids(path)) == 1000
    assert "replica.bypassed" in done.stderr
    assert "unreachable" in done.stderr
