"""``eventworker demo``, the newcomer's first run: a worker, a producer and a few thousand sample events,
in one process.

With no ``DATABASE_URL``/``REDIS_URL`` it runs on an embedded SQLite file and the
in-process Redis stand-in; with them set, on the real servers. The embedded file is started
afresh on each run unless ``--keep``; a database the user named is never emptied.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from worker.commands.base import examples, settings_or_exit, with_database, with_session
from worker.config import Settings, redact_redis_url, redact_url
from worker.db.sql import statements
from worker.protocol.serialization import deserialize

DEMO_DATABASE_FILE = "eventworker-demo.sqlite3"
DEMO_DATABASE_URL = f"sqlite+aiosqlite:///{DEMO_DATABASE_FILE}"
#: The files SQLite keeps beside the database in WAL mode.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
TYPES = ("com.example.order.created", "com.example.order.paid", "com.example.user.signed_up")


def sample_events(count: int, seed: int | None = None) -> tuple[list[Any], int, int]:
    """``count`` inputs: valid events, ~10% repeats, ~5% invalid. Returns (inputs, repeats, invalid)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    start = datetime.now(UTC) - timedelta(hours=1)
    inputs: list[Any] = []
    valid: list[dict[str, Any]] = []
    duplicates = invalid = 0
    for i in range(count):
        roll = rng.random()
        if roll < 0.10 and valid:
            inputs.append(rng.choice(valid))
            duplicates += 1
        elif roll < 0.15:
            inputs.append(_invalid(rng, i))
            invalid += 1
        else:
            event = {
                "specversion": "1.0",
                "id": f"{run}-{i}",
                "source": f"/demo/shop/{i % 7}",
                "type": rng.choice(TYPES),
                "time": (start + timedelta(seconds=i)).isoformat(),
                "subject": f"order/{rng.randrange(1000)}",
                "datacontenttype": "application/json",
                "data": {
                    "amount": rng.randrange(100, 10_000),
                    "currency": "EUR",
                    "items": rng.randrange(1, 9),
                },
            }
            valid.append(event)
            inputs.append(event)
    return inputs, duplicates, invalid


def _invalid(rng: random.Random, i: int) -> Any:
    return rng.choice(
        [
            {"specversion": "1.0", "id": f"bad-{i}", "type": "t"},  # no source
            {"specversion": "1.0", "id": i, "source": "/demo", "type": "t"},  # id not a string
            {"specversion": "1.0", "id": f"bad-{i}", "source": "/demo", "type": "t", "time": "yesterday"},
            {"specversion": "0.3", "id": f"bad-{i}", "source": "/demo", "type": "t"},
            f"not an event {i}",
        ]
    )


@dataclass
class DemoReport:
    """What the demo sent and what the worker did with it."""

    sent: int
    sent_duplicates: int
    sent_invalid: int
    accepted: int
    duplicates: int
    rejected: int
    failed_jobs: int
    seconds: float
    tables: dict[str, int]

    def lines(self, settings: Settings) -> list[str]:
        """The summary a person reads."""
        rate = self.sent / self.seconds if self.seconds else 0.0
        failed = f", FAILED JOBS {self.failed_jobs} (`eventworker failed list`)" if self.failed_jobs else ""
        return [
            f"database: {redact_url(settings.database_url)}",
            f"redis:    {redact_redis_url(settings.redis_url)}",
            f"sent {self.sent} events ({self.sent_duplicates} repeated, {self.sent_invalid} invalid) "
            f"in {self.seconds:.2f}s: {rate:,.0f} events/s",
            f"accepted {self.accepted}, duplicates {self.duplicates}, rejected {self.rejected}{failed}",
            "rows now: " + ", ".join(f"{name} {count}" for name, count in self.tables.items()),
        ]


async def run_demo(settings: Settings, count: int = 5000) -> DemoReport:
    """Migrate, enqueue ``count`` sample events, run a worker until the queue is empty, summarise."""
    # Imported here: the worker with its jobs, arq and alembic take a few hundred ms to load, which --help
    # (it imports this module to list `demo`) does not need.
    from arq.jobs import Job
    from arq.worker import Worker

    from worker.db import schema
    from worker.main import worker_settings
    from worker.protocol.producer import EventProducer
    from worker.protocol.redis import MEMORY_URL, memory_pool

    await with_database(settings, lambda db: schema.upgrade(db.engine))
    options = worker_settings(settings, burst=True, handle_signals=False, poll_delay=0.01)
    inputs, sent_duplicates, sent_invalid = sample_events(count)
    started = time.perf_counter()
    redis = memory_pool() if settings.redis_url == MEMORY_URL else None
    async with EventProducer(
        settings.redis_url, queue_name=settings.queue_name, batch_size=settings.batch_size, redis=redis
    ) as producer:
        job_ids = await producer.emit(inputs)
        worker = Worker(**options)
        try:
            await worker.async_run()
        finally:
            await worker.close()
        totals = {"accepted": 0, "duplicates": 0, "rejected": 0, "failed_jobs": 0}
        for job_id in job_ids:
            info = await Job(job_id, producer.redis, _deserializer=deserialize).result_info()
            if info is None or not info.success:
                totals["failed_jobs"] += 1
                continue
            for key in ("accepted", "duplicates", "rejected"):
                totals[key] += int(info.result.get(key, 0))
    seconds = time.perf_counter() - started
    tables = await with_session(settings, statements.table_counts)
    return DemoReport(count, sent_duplicates, sent_invalid, seconds=seconds, tables=tables, **totals)


def demo_settings(settings: Settings) -> Settings:
    """``settings`` with the embedded defaults for URLs the user did not set."""
    from worker.protocol.redis import MEMORY_URL  # imported here: arq, which --help does not need

    overrides: dict[str, Any] = {}
    if "database_url" not in settings.model_fields_set:
        overrides["database_url"] = DEMO_DATABASE_URL
    if "redis_url" not in settings.model_fields_set:
        overrides["redis_url"] = MEMORY_URL
    if "log_level" not in settings.model_fields_set:
        overrides["log_level"] = "WARNING"  # the summary is the demo's output
    return settings.model_copy(update=overrides) if overrides else settings


def remove_demo_database(directory: Path) -> None:
    """Delete the embedded demo database in ``directory`` (and SQLite's files beside it), if there."""
    for suffix in ("", *SQLITE_SIDE_FILES):
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{DEMO_DATABASE_FILE}{suffix}").unlink()


@click.command(
    "demo",
    epilog=examples("eventworker demo", "eventworker demo --events 20000 --keep"),
)
@click.option("--events", "count", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option(
    "--keep",
    is_flag=True,
    help=f"Add to the rows of the last run in {DEMO_DATABASE_FILE} instead of starting it afresh.",
)
def demo_command(count: int, keep: bool) -> None:
    """Run a worker on sample events (embedded SQLite and Redis stand-in unless the URLs are set).

    The embedded database, eventworker-demo.sqlite3 in the working directory, starts empty on each
    run unless --keep. A database named by DATABASE_URL is used as it is, never emptied.
    """
    given = settings_or_exit()
    settings = demo_settings(given)
    if "database_url" not in given.model_fields_set and not keep:
        remove_demo_database(Path.cwd())
    for line in asyncio.run(run_demo(settings, count)).lines(settings):
        click.echo(line)
