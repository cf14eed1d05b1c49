"""An export round-trips: enqueued into a fresh database and exported again, it gives the same events.

For generated events, on every driver: the events go through `eventworker enqueue`, a real worker run
and `eventworker export` (the commands themselves, through click); that export goes through
`eventworker enqueue` into a second, fresh database, a worker run and `eventworker export` again.
Apart from ``ewseq`` and ``ewreceivedat`` (the row's place and arrival, new in the second database),
the two exports hold the same events, byte for byte once parsed and written again in one way (so a
number, a key order or a true/1 that changed on the second pass fails it). And the first export is the
events as sent, under the normalisations docs/batch-work.md ("What an export changes") lists, which
:func:`as_exported` applies: no more, or the test fails.
"""

from __future__ import annotations

import asyncio
import base64
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncmy
import asyncpg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url
from support import run_worker

from worker.commands.enqueue import enqueue_command
from worker.commands.export import export_command
from worker.config import Settings, load_settings
from worker.db import schema
from worker.db.engine import Database
from worker.db.models import Base, DeadLetter, Event
from worker.domain.export import RECEIVED_ATTRIBUTE, SEQ_ATTRIBUTE
from worker.protocol.events import ATTRIBUTES
from worker.protocol.serialization import deserialize, serialize

pytestmark = pytest.mark.integration

#: Examples per driver: enough to meet each kind of value several times, few enough for CI
#: (each example is two enqueues, two worker runs and two exports).
EXAMPLES = 12
ADDED = {SEQ_ATTRIBUTE, RECEIVED_ATTRIBUTE}

# -- generated events ---------------------------------------------------------------------------------

#: Text a database can hold: no NUL, no lone surrogate (the worker refuses those as dead letters).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
NAME = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=12)
NUMBER = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),  # beyond 64 bits too: JSON has no limit
    st.floats(allow_nan=False, allow_infinity=False),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBER | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
EXTENSION_NAMES = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True).filter(
    lambda name: name not in ATTRIBUTES | ADDED
)
OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def times(draw: st.DrawFn) -> str:
    """An RFC 3339 time as producers write them: any offset, Z or not, 0 to 9 fractional digits."""
    when = draw(
        st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=OFFSETS)
    )
    digits = draw(st.integers(min_value=0, max_value=9))
    fraction = f"{when.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits]
    offset = when.strftime("%z")
    offset = "Z" if offset == "+0000" and draw(st.booleans()) else f"{offset[:3]}:{offset[3:]}"
    return when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + offset


@st.composite
def cloudevents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid CloudEvent with any mix of the optional attributes, data or data_base64, extensions."""
    event: dict[str, Any] = {"specversion": "1.0", "id": draw(NAME), "source": draw(NAME), "type": draw(NAME)}
    for name, values in (
        ("time", times()),
        ("subject", TEXT),
        ("datacontenttype", TEXT),
        ("dataschema", TEXT),
    ):
        if draw(st.booleans()):
            event[name] = draw(values)
    payload = draw(st.sampled_from(["data", "data", "bare number", "null data", "data_base64", "none"]))
    if payload == "data":
        event["data"] = draw(JSON_VALUES)
    elif payload == "bare number":  # drawn on its own: SQLite once stored these as numbers, not JSON
        event["data"] = draw(NUMBER)
    elif payload == "null data":
        event["data"] = None
    elif payload == "data_base64":
        event["data_base64"] = base64.b64encode(draw(st.binary(max_size=16))).decode()
    extensions = draw(st.dictionaries(EXTENSION_NAMES, st.booleans() | NUMBER | TEXT, max_size=3))
    event.update(extensions)
    return event


EVENT_LISTS = st.lists(cloudevents(), min_size=1, max_size=6, unique_by=lambda e: (e["source"], e["id"]))


# -- what an export is expected to hold -----------------------------------------------------------------


def as_exported(sent: dict[str, Any]) -> dict[str, Any]:
    """``sent`` as an export gives it back: each normalisation docs/batch-work.md lists, and no other."""
    event = dict(sent)
    if "time" in event:  # in UTC with Z, to the microsecond (further digits are dropped, not rounded)
        event["time"] = _rfc3339(datetime.fromisoformat(_truncated(event["time"])))
    if "data" in event and event["data"] is None:  # data: null is no data
        del event["data"]
    return event


def _truncated(text: str) -> str:
    """An RFC 3339 time with at most six fractional digits, as the worker stores it."""
    if "." not in text:
        return text
    head, rest = text.split(".", 1)
    digits = len(rest) - len(rest.lstrip("0123456789"))
    return f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def typed(value: Any, numbers_by_value: bool) -> Any:
    """A comparable form that tells true from 1 and ignores object key order; 1.0 and 1 differ
    unless ``numbers_by_value`` (PostgreSQL: jsonb writes a number as its decimal value)."""
    if isinstance(value, dict):
        return ("object", frozenset((key, typed(item, numbers_by_value)) for key, item in value.items()))
    if isinstance(value, list):
        return ("array", tuple(typed(item, numbers_by_value) for item in value))
    if numbers_by_value and isinstance(value, int | float) and not isinstance(value, bool):
        return ("number", Decimal(repr(value)) if isinstance(value, float) else Decimal(value))
    return (type(value).__name__, value)


# -- the commands -----------------------------------------------------------------------------------------


def _environment(settings: Settings) -> dict[str, str]:
    return {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "EVENTWORKER_QUEUE_NAME": settings.queue_name,
    }


def enqueue_and_store(settings: Settings, path: Path) -> None:
    """`eventworker enqueue PATH`, then a worker run until the queue is empty."""
    result = CliRunner().invoke(enqueue_command, [str(path)], env=_environment(settings))
    assert result.exit_code == 0, result.output
    asyncio.run(run_worker(settings))


def export(settings: Settings, path: Path) -> list[dict[str, Any]]:
    """`eventworker export PATH`: the events it wrote, parsed exactly (big integers stay integers)."""
    result = CliRunner().invoke(export_command, [str(path)], env=_environment(settings))
    assert result.exit_code == 0, result.output
    return [deserialize(line) for line in path.read_bytes().splitlines()]


# -- the databases ----------------------------------------------------------------------------------------


async def _emptied(settings: Settings) -> None:
    """Every table emptied, and the event and dead-letter counts read back as zero."""
    db = Database.from_settings(settings)
    try:
        async with db.transaction() as session:
            for table in reversed(Base.metadata.sorted_tables):
                await session.execute(delete(table))
    finally:
        await db.dispose()


async def _dead_letters(settings: Settings) -> list[str]:
    db = Database.from_settings(settings)
    try:
        async with db.transaction() as session:
            return [row.errors for row in (await session.scalars(select(DeadLetter)))]
    finally:
        await db.dispose()


async def _count(settings: Settings) -> int:
    db = Database.from_settings(settings)
    try:
        async with db.transaction() as session:
            return int(await session.scalar(select(func.count()).select_from(Event)) or 0)
    finally:
        await db.dispose()


async def _migrated(url: str) -> None:
    db = Database.from_settings(load_settings(database_url=url))
    try:
        await schema.upgrade(db.engine)
    finally:
        await db.dispose()


@pytest.fixture
async def fresh_settings(
    settings: Settings, backend: str, pg_template: str, tmp_path: Path
) -> AsyncIterator[Settings]:
    """A second database on the same driver, server, Redis and queue, that no event has reached yet."""
    url = make_url(settings.database_url)
    name = f"ew_test_{uuid.uuid4().hex[:12]}"
    if url.get_backend_name() == "postgresql":
        admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
        finally:
            await connection.close()
        yield settings.model_copy(update={"database_url": url.set(database=name).render_as_string(False)})
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
    elif url.get_backend_name() == "mysql":

        async def mysql(statement: str) -> None:
            connection = await asyncmy.connect(
                host=url.host, port=url.port or 3306, user=url.username, password=url.password or ""
            )
            try:
                async with connection.cursor() as cursor:
                    await cursor.execute(statement)
            finally:
                connection.close()

        await mysql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        fresh = url.set(database=name).render_as_string(hide_password=False)
        await _migrated(fresh)
        yield settings.model_copy(update={"database_url": fresh})
        await mysql(f"DROP DATABASE IF EXISTS `{name}`")
    else:
        fresh = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
        await _migrated(fresh)
        yield settings.model_copy(update={"database_url": fresh})


@pytest.fixture
def timings() -> Iterator[list[float]]:
    """Seconds per example, printed at the end (pytest -s shows them)."""
    seconds: list[float] = []
    yield seconds
    if seconds:
        print(f"\n{len(seconds)} examples, {sum(seconds):.1f}s, slowest {max(seconds):.2f}s")


# -- the property -----------------------------------------------------------------------------------------


@given(sent=EVENT_LISTS)
@hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    # No shrinking: an example costs about half a second, and shrinking one took over five minutes;
    # a failure shows the example as generated (at most six small events).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    # Both databases are the test's own and emptied at the start of each example.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_an_export_enqueued_into_a_fresh_database_exports_the_same_events(
    settings, fresh_settings, timings, sent
):
    started = time.monotonic()
    asyncio.run(_emptied(settings))
    asyncio.run(_emptied(fresh_settings))
    with tempfile.TemporaryDirectory() as directory:
        sent_file, first_file, second_file = (Path(directory) / name for name in ("sent", "1", "2"))
        sent_file.write_bytes(b"".join(serialize(event) + b"\n" for event in sent))

        enqueue_and_store(settings, sent_file)
        first = export(settings, first_file)
        enqueue_and_store(fresh_settings, first_file)
        second = export(fresh_settings, second_file)

    assert asyncio.run(_dead_letters(settings)) == []
    assert asyncio.run(_dead_letters(fresh_settings)) == []
    assert asyncio.run(_count(fresh_settings)) == len(sent)

    def by_identity(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(e["source"], e["id"]): {k: v for k, v in e.items() if k not in ADDED} for e in events}

    # The round trip: the same events, in the same form, apart from ewseq and ewreceivedat.
    assert len(second) == len(first) == len(sent)
    again, before = by_identity(second), by_identity(first)
    assert again.keys() == before.keys()
    for identity, event in before.items():
        assert serialize(again[identity]) == serialize(event), identity

    # And the first export is what was sent, under the documented normalisations.
    by_value = make_url(settings.database_url).get_backend_name() == "postgresql"
    for identity, event in before.items():
        original = next(e for e in sent if (e["source"], e["id"]) == identity)
        assert typed(event, by_value) == typed(as_exported(original), by_value), (original, event)
    timings.append(time.monotonic() - started)
